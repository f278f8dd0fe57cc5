"""The other processes: the retraining job (`retrain`) and registry operations, `tickcast
replay` (`replay`), and `tickcast run`, the whole product on one machine (`run_local`).

May import every sub-package below `cli`. `replay` imports no JAX (it validates and sends
ticks only).
"""

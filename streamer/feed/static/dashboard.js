// tickcast live dashboard: one websocket to the feed (docs/feed.md), one uPlot chart per
// picked symbol. No framework, no build step. Test hooks live on window.tickcast.
// URL parameters: ?token=T (passed on to the feed), ?symbols=A,B (initial picks instead of
// the first four listed), ?ws=URL (another feed than this page's own /ws).
(function () {
  "use strict";

  const KEEP = 300; // points kept per chart
  const LIST_EVERY_MS = 3000; // refresh of the symbol picker (the `list` op)
  const DEFAULT_PICKS = 4; // symbols subscribed on first load
  const MAX_CHIPS = 60; // chips shown at once; the filter narrows the rest
  const LATENCY_WINDOW_MS = 5000;

  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const initial = (params.get("symbols") || "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);

  // Test hooks and a window onto the feed's state (read-only for the page's users).
  const T = (window.tickcast = {
    url: null,
    connected: false,
    connects: 0,
    lastSeq: 0,
    gaps: 0,
    resyncs: 0,
    frames: 0,
    updates: 0,
    forecasts: 0,
    snapshots: 0,
    conflated: 0,
    hello: null,
    stats: null,
    symbols: [], // the last `list`
    subscribed: [], // acknowledged by the server
    points: {}, // symbol -> price points in its chart
    live: {}, // symbol -> points appended from `update` messages
    errors: [], // "code: message" of error replies
    closes: [], // close codes seen
    // a chart's uPlot data [x, price, forecast, lower, upper]; x is the tick's seq
    series: (symbol) => (charts.has(symbol) ? charts.get(symbol).data() : null),
  });

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  };

  // ---------------------------------------------------------------- formatting

  // Prices span 1e-8 (meme tokens) to 1e10 in one stream: 7 significant digits, never
  // fixed decimals (a stablecoin's 1.0001 must not read 1.000; 1.2e-8 must not read 0).
  function fmtNum(v) {
    if (v == null || !Number.isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a < 1e-4 || a >= 1e15) return v.toPrecision(7).replace(/\.?0+e/, "e");
    return v.toLocaleString("en-US", { maximumSignificantDigits: 7 });
  }
  const fmtValue = (u, v) => fmtNum(v);
  const fmtErr = (v) => (v == null || !Number.isFinite(v) ? "–" : v.toPrecision(3));
  const fmtRate = (v) => {
    if (v == null || !Number.isFinite(v)) return "–";
    return v >= 100 ? Math.round(v).toLocaleString("en-US") : v.toFixed(1);
  };
  const fmtMs = (v) => {
    if (v == null || !Number.isFinite(v)) return "–";
    return (v >= 100 ? Math.round(v) : v.toFixed(1)) + " ms";
  };
  const pad = (n, w = 2) => String(n).padStart(w, "0");

  // Tick timestamps (epoch ms, UTC): a date for daily data, a time of day otherwise.
  function fmtTs(ms, step) {
    if (ms == null || !Number.isFinite(ms)) return "";
    const d = new Date(ms);
    const date = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
    const time = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
    if (step >= 6 * 3600e3) return date;
    if (step >= 1000) return time;
    return `${time}.${pad(d.getUTCMilliseconds(), 3)}`;
  }

  function quantile(xs, q) {
    if (!xs.length) return null;
    const s = xs.slice().sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor(q * s.length))];
  }

  // ---------------------------------------------------------------- one chart per symbol

  const charts = new Map(); // symbol -> SymbolChart, in pick order
  const dirty = new Set();
  let drawScheduled = false;

  function scheduleDraw(chart) {
    dirty.add(chart);
    if (drawScheduled) return;
    drawScheduled = true;
    // requestAnimationFrame batches bursts of updates; the timeout draws hidden tabs too.
    const flush = () => {
      if (!drawScheduled) return;
      drawScheduled = false;
      for (const c of dirty) c.draw();
      dirty.clear();
    };
    requestAnimationFrame(flush);
    setTimeout(flush, 250);
  }

  const AXIS = {
    stroke: "#8b95a5",
    grid: { stroke: "rgba(255,255,255,0.06)", width: 1 },
    ticks: { stroke: "rgba(255,255,255,0.12)", width: 1 },
  };

  class SymbolChart {
    constructor(symbol) {
      this.symbol = symbol;
      // Parallel arrays, oldest first: the tick's seq, ts and price, and the forecast,
      // lower and upper made AT that tick for the next one.
      this.seq = [];
      this.ts = [];
      this.price = [];
      this.fc = [];
      this.lo = [];
      this.hi = [];
      this.last = null; // latest forecast object
      this.latency = null; // now - tick_time of the latest update, ms
      this.live = 0;
      this.u = null;
      this.build();
    }

    build() {
      const card = (this.card = el("article", "card"));
      card.dataset.symbol = this.symbol;
      const head = el("div", "card-head");
      head.append(el("h2", null, this.symbol));
      this.badge = el("span", "badge", "warming");
      this.badge.hidden = true;
      head.append(this.badge);
      this.nums = el("div", "nums", "waiting for ticks…");
      head.append(this.nums);
      const x = el("button", "x", "×");
      x.title = `unsubscribe ${this.symbol}`;
      x.addEventListener("click", () => setPicked(this.symbol, false));
      head.append(x);
      this.plot = el("div", "plot");
      this.foot = el("div", "card-foot");
      card.append(head, this.plot, this.foot);
      $("charts").append(card);
      $("empty").hidden = true;
    }

    makePlot() {
      const width = Math.max(300, this.plot.clientWidth || 500);
      const self = this;
      this.u = new uPlot(
        {
          width,
          height: 250,
          scales: { x: { time: false } },
          cursor: { drag: { x: false, y: false, setScale: false } },
          legend: { live: true },
          series: [
            {
              label: "tick",
              value: (u, v) => (v == null ? "–" : `#${v} ${self.tsLabel(v)}`),
            },
            { label: "price", stroke: "#5aa9ff", width: 1.6, spanGaps: true, value: fmtValue },
            { label: "forecast", stroke: "#ffb454", width: 1.4, spanGaps: true, value: fmtValue },
            {
              label: "lower 5%",
              stroke: "rgba(255,180,84,0.35)",
              width: 1,
              spanGaps: true,
              value: fmtValue,
            },
            {
              label: "upper 95%",
              stroke: "rgba(255,180,84,0.35)",
              width: 1,
              spanGaps: true,
              value: fmtValue,
            },
          ],
          bands: [{ series: [4, 3], fill: "rgba(255,180,84,0.16)" }],
          axes: [
            Object.assign({}, AXIS, {
              space: 90,
              incrs: [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 5e3, 1e4, 1e5, 1e6],
              values: (u, splits) => splits.map((s) => self.tsLabel(s)),
            }),
            Object.assign({}, AXIS, { size: 64 }),
          ],
        },
        this.data(),
        this.plot,
      );
    }

    // The median spacing of the shown ticks picks the label format.
    step() {
      const n = this.ts.length;
      if (n < 2) return 86400e3;
      const d = [];
      for (let k = Math.max(1, n - 50); k < n; k++) d.push(this.ts[k] - this.ts[k - 1]);
      return quantile(d, 0.5);
    }

    tsLabel(s) {
      const n = this.seq.length;
      if (!n) return "";
      if (s > this.seq[n - 1]) return "next";
      // the last tick at or before seq s
      let lo = 0;
      let hi = n - 1;
      if (s < this.seq[0]) return "";
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (this.seq[mid] <= s) lo = mid;
        else hi = mid - 1;
      }
      return fmtTs(this.ts[lo], this._step);
    }

    columns() {
      return [this.seq, this.ts, this.price, this.fc, this.lo, this.hi];
    }

    clear() {
      for (const a of this.columns()) a.length = 0;
    }

    trim() {
      const extra = this.seq.length - KEEP;
      if (extra > 0) {
        for (const a of this.columns()) a.splice(0, extra);
      }
    }

    append(seq, ts, price, fc, lo, hi) {
      this.seq.push(seq);
      this.ts.push(ts);
      this.price.push(price);
      this.fc.push(fc);
      this.lo.push(lo);
      this.hi.push(hi);
    }

    // A snapshot replaces the chart: history is the symbol's last points, oldest first.
    // Points older than the history that continue into it are kept (a resync after a gap
    // does not shrink the chart back to `history` points).
    reset(history, forecast) {
      const h = history || {};
      const n = (h.ts || []).length;
      // history[n-1] is the tick of `forecast` (its latest); if it is not, the forecast
      // is appended after the history.
      const included =
        forecast != null &&
        n > 0 &&
        h.ts[n - 1] === forecast.ts &&
        h.price[n - 1] === forecast.price;
      const lastSeq = forecast == null ? n : included ? forecast.seq : forecast.seq - 1;
      const first = lastSeq - n + 1;
      const m = this.seq.length;
      let keep = 0;
      if (forecast != null && n > 0 && m > 0 && this.seq[m - 1] >= first - 1) {
        while (keep < m && this.seq[keep] < first) keep += 1;
        // the same seq at another time: the symbol restarted on the server
        if (keep < m && this.seq[keep] === first && this.ts[keep] !== h.ts[0]) keep = 0;
      }
      for (const a of this.columns()) a.length = keep;
      for (let k = 0; k < n; k++) {
        const seq = lastSeq - (n - 1 - k);
        this.append(seq, h.ts[k], h.price[k], h.forecast[k], h.lower[k], h.upper[k]);
      }
      if (forecast != null && !included) this.push(forecast, false);
      this.last = forecast;
      this.trim();
      this.changed();
    }

    // One live forecast; false if it was already drawn (a duplicate or an older one).
    push(f, live = true) {
      const n = this.seq.length;
      if (n && f.seq <= this.seq[n - 1]) {
        if (f.seq === this.seq[n - 1] || f.ts <= this.ts[n - 1]) return false;
        this.clear(); // seq went back with newer ticks: the symbol restarted on the server
      }
      this.append(f.seq, f.ts, f.price, f.forecast, f.lower, f.upper);
      this.last = f;
      if (live) {
        this.live += 1;
        if (Number.isFinite(f.tick_time)) this.latency = Date.now() - f.tick_time;
      }
      this.trim();
      this.changed();
      return true;
    }

    changed() {
      T.points[this.symbol] = this.seq.length;
      T.live[this.symbol] = this.live;
      scheduleDraw(this);
    }

    // uPlot data: x is the symbol's tick number (seq). The price of tick s sits at x = s and
    // the forecast made at tick s at x = s + 1, so the newest forecast is one step ahead.
    data() {
      const xs = [];
      const p = [];
      const f = [];
      const lo = [];
      const hi = [];
      for (let k = 0; k < this.seq.length; k++) {
        const s = this.seq[k];
        if (xs.length && xs[xs.length - 1] === s) {
          p[p.length - 1] = this.price[k];
        } else {
          xs.push(s);
          p.push(this.price[k]);
          f.push(null);
          lo.push(null);
          hi.push(null);
        }
        xs.push(s + 1);
        p.push(null);
        f.push(this.fc[k]);
        lo.push(this.lo[k]);
        hi.push(this.hi[k]);
      }
      return [xs, p, f, lo, hi];
    }

    // Live error over the shown points: forecast at tick k vs the price at tick k+1, and
    // persistence (the price at k) vs the same price; only where tick k+1 is the next tick.
    errors() {
      let se = 0;
      let sp = 0;
      let inside = 0;
      let n = 0;
      for (let k = 0; k + 1 < this.seq.length; k++) {
        if (this.seq[k + 1] !== this.seq[k] + 1) continue;
        const next = this.price[k + 1];
        const fc = this.fc[k];
        const last = this.price[k];
        if (!Number.isFinite(next) || !Number.isFinite(fc) || !Number.isFinite(last)) continue;
        se += (fc - next) ** 2;
        sp += (this.price[k] - next) ** 2;
        if (this.lo[k] <= next && next <= this.hi[k]) inside += 1;
        n += 1;
      }
      if (!n) return null;
      return { n, model: Math.sqrt(se / n), persistence: Math.sqrt(sp / n), coverage: inside / n };
    }

    draw() {
      if (!this.card.isConnected) return;
      this._step = this.step();
      if (!this.u) this.makePlot();
      else this.u.setData(this.data());
      const f = this.last;
      if (f) {
        this.nums.replaceChildren(
          "price ",
          el("b", "num", fmtNum(f.price)),
          " → forecast ",
          el("b", "num fc", fmtNum(f.forecast)),
          ` [${fmtNum(f.lower)}, ${fmtNum(f.upper)}]`,
        );
        this.badge.hidden = !f.warming;
      }
      const e = this.errors();
      const parts = [];
      if (e) {
        const ratio = e.persistence > 0 ? e.model / e.persistence : null;
        const r = ratio == null ? "–" : el("b", ratio < 1 ? "good" : "bad", ratio.toFixed(3));
        parts.push(
          this.item("RMSE model", fmtErr(e.model)),
          this.item("persistence", fmtErr(e.persistence)),
          this.item("ratio", r),
          this.item("in 90% interval", `${Math.round(100 * e.coverage)}%`),
          this.item("over", `${e.n} steps`),
        );
      } else {
        parts.push(el("span", null, "error vs persistence: needs two consecutive ticks"));
      }
      parts.push(this.item("latency", this.latency == null ? "–" : fmtMs(this.latency)));
      parts.push(this.item("points", String(this.seq.length)));
      this.foot.replaceChildren(...parts);
    }

    item(k, v) {
      const s = el("span", null, k + " ");
      s.append(typeof v === "string" ? el("b", "num", v) : v);
      return s;
    }

    resize() {
      if (this.u) this.u.setSize({ width: Math.max(300, this.plot.clientWidth), height: 250 });
    }

    destroy() {
      if (this.u) this.u.destroy();
      this.card.remove();
      delete T.points[this.symbol];
      delete T.live[this.symbol];
      if (!charts.size) $("empty").hidden = false;
    }
  }

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => charts.forEach((c) => c.resize()), 100);
  });

  // ---------------------------------------------------------------- the feed connection

  let ws = null;
  let nextId = 1;
  let backoff = 500;
  let listTimer = null;
  let lastMsgAt = 0;
  let lastResync = 0;
  let heartbeatS = 1.0;
  // Until the user picks (or ?symbols= is given), the picks fill up to the first
  // DEFAULT_PICKS symbols listed, as they appear.
  let auto = initial.length === 0;
  const picked = new Set(initial); // what the user wants, in order
  const subscribed = new Set(); // what the server acknowledged
  const pending = new Map(); // request id -> request
  const latencies = []; // [receive time, now - tick_time]

  for (const s of picked) charts.set(s, new SymbolChart(s));

  function feedUrl() {
    const override = params.get("ws");
    const u = new URL(override || "ws", location.href);
    if (!override) u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    u.search = "";
    u.hash = "";
    if (token) u.searchParams.set("token", token);
    return u.toString();
  }

  function setConn(state, text) {
    $("conn").className = "conn " + state;
    $("conn-text").textContent = text;
  }

  let noticeTimer = null;
  function notice(text) {
    const n = $("notice");
    n.textContent = text;
    n.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => (n.hidden = true), 8000);
  }

  function send(msg) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    msg.id = nextId++;
    pending.set(msg.id, msg);
    if (pending.size > 200) pending.delete(pending.keys().next().value); // unanswered
    ws.send(JSON.stringify(msg));
    return true;
  }

  const CLOSES = {
    1000: "closed",
    1001: "server shutting down",
    1006: "connection lost",
    1008: "rejected: missing or wrong token",
    1009: "closed: message too large",
    1013: "server full",
    4001: "closed: this browser was too slow",
  };

  function connect() {
    let url;
    try {
      url = feedUrl();
      ws = new WebSocket(url);
    } catch (e) {
      setConn("off", "no feed: " + e.message);
      return;
    }
    T.url = token ? url.replace(/token=[^&]*/, "token=…") : url;
    setConn("wait", "connecting…");
    const sock = ws;
    sock.onopen = () => {
      T.lastSeq = 0; // seq counts per connection, from 1 for hello
      lastMsgAt = Date.now();
      subscribed.clear();
      pending.clear();
      send({ op: "list" });
      if (picked.size) send({ op: "subscribe", symbols: [...picked] });
      clearInterval(listTimer);
      listTimer = setInterval(() => send({ op: "list" }), LIST_EVERY_MS);
    };
    sock.onmessage = (ev) => {
      if (sock === ws) onMessage(ev.data);
    };
    sock.onclose = (ev) => {
      if (sock !== ws) return;
      T.connected = false;
      T.closes.push(ev.code);
      clearInterval(listTimer);
      subscribed.clear();
      T.subscribed = [];
      const why = CLOSES[ev.code] || `closed (${ev.code})`;
      const wait = ev.code === 1008 ? 10000 : backoff;
      const reason = ev.reason ? ": " + ev.reason : "";
      setConn("off", `${why}${reason} — retrying in ${Math.round(wait / 1000)} s`);
      backoff = Math.min(backoff * 2, 10000);
      setTimeout(connect, wait);
    };
  }

  // No message for three heartbeats: the connection is dead even if TCP has not noticed.
  setInterval(() => {
    if (ws && ws.readyState === WebSocket.OPEN && T.connected) {
      const quiet = Date.now() - lastMsgAt;
      if (quiet > Math.max(5000, 3000 * heartbeatS)) {
        setConn("off", "no heartbeat — reconnecting");
        ws.close(4000, "no heartbeat");
      }
    }
    renderLatency();
  }, 1000);

  // At most one resync a second: one answers every gap before it, and a later gap gets
  // its own (deferred) resync.
  let resyncTimer = null;
  function resync() {
    const wait = lastResync + 1000 - Date.now();
    if (wait > 0) {
      if (!resyncTimer) resyncTimer = setTimeout(resync, wait);
      return;
    }
    clearTimeout(resyncTimer);
    resyncTimer = null;
    lastResync = Date.now();
    T.resyncs += 1;
    send({ op: "resync" });
  }

  function onMessage(data) {
    let m;
    try {
      m = JSON.parse(data);
    } catch (e) {
      T.errors.push("unparseable frame from the server");
      return;
    }
    T.frames += 1;
    lastMsgAt = Date.now();
    if (typeof m.seq === "number") {
      if (m.seq !== T.lastSeq + 1) {
        T.gaps += 1;
        console.warn(`tickcast: seq gap, expected ${T.lastSeq + 1}, got ${m.seq}; resync`);
        resync();
      }
      T.lastSeq = m.seq;
    }
    switch (m.type) {
      case "hello":
        T.hello = m;
        T.connected = true;
        T.connects += 1;
        backoff = 500;
        heartbeatS = m.heartbeat_interval || 1.0;
        setConn("ok", "live");
        break;
      case "ack":
        onAck(m);
        break;
      case "snapshot": {
        T.snapshots += 1;
        const c = charts.get(m.symbol);
        if (c) c.reset(m.history, m.forecast);
        break;
      }
      case "update":
        onUpdate(m);
        break;
      case "heartbeat":
        T.stats = m.stats || null;
        renderStats(m);
        break;
      case "pong":
        break;
      case "error":
        onError(m);
        break;
      default:
        break;
    }
    renderFeed();
  }

  function onAck(m) {
    pending.delete(m.id);
    if (m.op === "list") {
      const syms = Array.isArray(m.symbols) ? m.symbols : [];
      T.symbols = syms;
      const limit = (T.hello && T.hello.limits && T.hello.limits.max_symbols) || DEFAULT_PICKS;
      const want = Math.min(DEFAULT_PICKS, limit);
      if (auto && picked.size < want) {
        const add = syms.filter((s) => !picked.has(s)).slice(0, want - picked.size);
        for (const s of add) setPicked(s, true, false);
        if (add.length) send({ op: "subscribe", symbols: add });
      }
      renderPicker();
    } else if (m.op === "subscribe") {
      for (const s of m.symbols || []) if (picked.has(s)) subscribed.add(s);
    } else if (m.op === "unsubscribe") {
      for (const s of m.symbols || []) subscribed.delete(s);
    }
    T.subscribed = [...subscribed].sort();
  }

  function onUpdate(m) {
    T.updates += 1;
    if (m.conflated) T.conflated += m.conflated;
    const now = Date.now();
    for (const f of m.forecasts || []) {
      T.forecasts += 1;
      if (Number.isFinite(f.tick_time)) latencies.push([now, now - f.tick_time]);
      const c = charts.get(f.symbol);
      if (c) c.push(f);
    }
  }

  function onError(m) {
    T.errors.push(`${m.code}: ${m.message}`);
    const req = pending.get(m.id);
    pending.delete(m.id);
    notice(`server: ${m.message || m.code}`);
    if (req && req.op === "subscribe" && Array.isArray(req.symbols)) {
      // nothing was subscribed: take the picks back
      auto = false;
      for (const s of req.symbols) if (!subscribed.has(s)) setPicked(s, false, false);
      renderPicker();
    }
  }

  // ---------------------------------------------------------------- panels

  function setText(id, text, cls) {
    const e = $(id);
    e.textContent = text;
    e.className = "v" + (cls ? " " + cls : "");
  }

  function renderStats(hb) {
    const s = hb.stats || {};
    setText("s-model", s.model || "–", "small");
    $("s-model").title = s.model || "";
    setText("s-ticks", fmtRate(s.ticks_per_s));
    setText("s-fcs", fmtRate(s.forecasts_per_s));
    const lat = s.latency_ms || {};
    const none = lat.p50 == null && lat.max == null;
    setText("s-lat", none ? "–" : `${fmtMs(lat.p50)} / ${fmtMs(lat.max)}`);
    // Scale-free quality of the serving version, pooled over symbols on log prices (the
    // server's streamer/quality.py; the same definitions as `tickcast evaluate --json`).
    const q = s.quality || {};
    if (q.error_ratio == null && q.coverage90 == null) {
      setText("s-quality", "–");
    } else {
      const f3 = (v) => (v == null || !Number.isFinite(v) ? "–" : v.toFixed(3));
      const cov = q.coverage90 == null ? "–" : `${(100 * q.coverage90).toFixed(1)}%`;
      const text = `×${f3(q.error_ratio)} / ${cov} / ×${f3(q.interval_score_ratio)}`;
      const off = q.coverage90 != null && (q.coverage90 < 0.85 || q.coverage90 > 0.95);
      const bad = off || (q.error_ratio != null && q.error_ratio > 1.05);
      setText("s-quality", text, bad ? "bad" : "good");
      $("s-quality").title = `${q.n} scored forecasts of ${q.version}`;
    }
    setText("s-symbols", s.symbols == null ? "–" : String(s.symbols));
    setText("s-conns", s.connections == null ? "–" : String(s.connections));
  }

  function renderFeed() {
    setText("s-feed", `${T.frames} / ${T.gaps} / ${T.conflated}`, T.gaps ? "bad" : "");
  }

  function renderLatency() {
    const cut = Date.now() - LATENCY_WINDOW_MS;
    while (latencies.length && latencies[0][0] < cut) latencies.shift();
    const xs = latencies.map((x) => x[1]);
    const text = xs.length ? `${fmtMs(quantile(xs, 0.5))} / ${fmtMs(Math.max(...xs))}` : "–";
    setText("s-blat", text);
  }

  // ---------------------------------------------------------------- the symbol picker

  let pickerKey = "";

  function setPicked(sym, on, request = true) {
    if (on && !picked.has(sym)) {
      picked.add(sym);
      charts.set(sym, new SymbolChart(sym));
      if (request) send({ op: "subscribe", symbols: [sym] });
    } else if (!on && picked.has(sym)) {
      picked.delete(sym);
      const c = charts.get(sym);
      charts.delete(sym);
      if (c) c.destroy();
      subscribed.delete(sym);
      T.subscribed = [...subscribed].sort();
      if (request) send({ op: "unsubscribe", symbols: [sym] });
    }
    if (request) {
      auto = false;
      renderPicker(true);
    }
  }

  function renderPicker(force = false) {
    const q = $("filter").value.trim().toUpperCase();
    const key = q + "|" + T.symbols.join(",") + "|" + [...picked].join(",");
    if (!force && key === pickerKey) return;
    pickerKey = key;
    const match = (s) => !q || s.toUpperCase().includes(q);
    const listed = new Set(T.symbols);
    const chosen = [...picked].filter(match);
    const others = T.symbols.filter((s) => !picked.has(s) && match(s));
    const shown = chosen.concat(others.slice(0, Math.max(0, MAX_CHIPS - chosen.length)));
    const chips = shown.map((s) => {
      const b = el("button", "chip", s);
      b.type = "button";
      b.setAttribute("aria-pressed", String(picked.has(s)));
      if (!listed.has(s)) b.title = "not seen by the server yet";
      b.addEventListener("click", () => setPicked(s, !picked.has(s)));
      return b;
    });
    $("chips").replaceChildren(...chips);
    const hidden = chosen.length + others.length - shown.length;
    $("chips-more").textContent =
      (hidden > 0 ? `+${hidden} more, type to filter · ` : "") + `${T.symbols.length} symbols`;
  }

  $("filter").addEventListener("input", () => renderPicker());
  $("filter").addEventListener("keydown", (ev) => {
    if (ev.key !== "Enter") return;
    const v = $("filter").value.trim();
    if (!v) return;
    const exact = T.symbols.find((s) => s.toUpperCase() === v.toUpperCase());
    setPicked(exact || v, true);
    $("filter").value = "";
    renderPicker(true);
  });

  renderPicker(true);
  renderFeed();
  connect();
})();

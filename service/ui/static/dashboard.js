// jobpool dashboard: live charts from /ui/live.json, and live regions of server pages.
// No framework and no build step; everything is drawn as inline SVG. Nothing is asked
// while the tab is hidden, so a dashboard left in a background tab costs the host nothing.
"use strict";
(function () {
  const POLL_MS = 1000 * Number(document.body.dataset.pollS || 2);
  const HISTORY_S = 600; // seconds of history kept in the page, per series
  const SPAN_MIN_S = 60; // a chart spans what it has seen, at least this
  const SVG = "http://www.w3.org/2000/svg";

  // -- polling that pauses while the tab is hidden -------------------------------------
  function every(fn) {
    let timer = null;
    const tick = async () => {
      timer = null;
      if (document.hidden) return;
      try { await fn(); } finally {
        if (!document.hidden && timer === null) timer = setTimeout(tick, POLL_MS);
      }
    };
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && timer === null) tick();
    });
    tick();
  }

  // -- live regions: a part of the page fetched again and swapped, until it is final -----
  function refreshRegions() {
    const regions = document.querySelectorAll("[data-refresh][id]");
    if (!regions.length) return;
    every(async () => {
      const live = [...document.querySelectorAll("[data-refresh][id]")];
      if (!live.length) return;
      const answer = await fetch(location.href, { credentials: "same-origin" });
      if (!answer.ok) return;
      const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
      for (const region of live) {
        // Never move the keyboard focus from under someone using the region.
        if (region.contains(document.activeElement)) continue;
        const next = fresh.getElementById(region.id);
        if (next) region.replaceWith(document.importNode(next, true));
      }
    });
  }

  // -- numbers -------------------------------------------------------------------------
  const fmt = (v, digits = 1) =>
    v === null || v === undefined || Number.isNaN(v) ? "–"
      : Math.abs(v) >= 100 ? Math.round(v).toLocaleString("en") : v.toFixed(digits);
  const mb = (bytes) => (bytes / 1048576).toFixed(0) + " MB";
  const clock = (t) => new Date(t * 1000).toISOString().slice(11, 19) + " UTC";
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }
  function quantile(q, bounds, counts) {
    const total = counts[counts.length - 1];
    if (!(total > 0)) return null;
    const rank = q * total;
    for (let i = 0; i < counts.length; i++) {
      if (counts[i] >= rank) {
        const lo = i === 0 ? 0 : bounds[i - 1];
        const hi = i < bounds.length ? bounds[i] : bounds[bounds.length - 1];
        const below = i === 0 ? 0 : counts[i - 1];
        const inside = counts[i] - below;
        return 1000 * (inside > 0 ? lo + (hi - lo) * ((rank - below) / inside) : hi);
      }
    }
    return 1000 * bounds[bounds.length - 1];
  }

  // -- charts --------------------------------------------------------------------------
  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }
  function draw(figure, series, unit, now) {
    let svg = figure.querySelector("svg");
    let legend = figure.querySelector(".legend");
    if (!svg) {
      svg = el("svg", { role: "img" }, figure);
      legend = document.createElement("ul");
      legend.className = "legend";
      figure.appendChild(legend);
    }
    const w = svg.clientWidth || 320, h = svg.clientHeight || 140;
    const left = 44, bottom = 16, top = 6, right = 4;
    let first = now;
    for (const s of series) if (s.points.length && s.points[0][0] < first) first = s.points[0][0];
    const span = Math.min(HISTORY_S, Math.max(SPAN_MIN_S, Math.ceil((now - first) / 60) * 60));
    const from = now - span;
    let top_ = 0;
    for (const s of series) for (const [, v] of s.points) if (v > top_) top_ = v;
    const max = niceMax(top_);
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    const x = (t) => left + ((t - from) / span) * (w - left - right);
    const y = (v) => top + (1 - v / max) * (h - top - bottom);
    for (const v of [0, max / 2, max]) {
      el("line", { class: "grid", x1: left, x2: w - right, y1: y(v), y2: y(v) }, svg);
      el("text", { class: "axis", x: left - 4, y: y(v) + 4, "text-anchor": "end" }, svg)
        .textContent = fmt(v, max < 3 ? 1 : 0);
    }
    el("text", { class: "axis", x: left, y: h - 2 }, svg).textContent = `−${span / 60} min`;
    el("text", { class: "axis", x: w - right, y: h - 2, "text-anchor": "end" }, svg).textContent = "now";
    legend.replaceChildren();
    const said = [];
    series.forEach((s, i) => {
      const pts = s.points.filter(([t]) => t >= from);
      // A gap (null) breaks the line: a host that did not answer is not drawn as zero.
      let d = "", pen = false;
      for (const [t, v] of pts) {
        if (v === null) { pen = false; continue; }
        d += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
      }
      if (d) el("path", { class: `series s${i}`, d }, svg);
      const last = pts.length ? pts[pts.length - 1][1] : null;
      const item = document.createElement("li");
      item.className = `s${i}`;
      item.append(`${s.name} `);
      const value = document.createElement("b");
      value.textContent = fmt(last) + unit;
      item.appendChild(value);
      legend.appendChild(item);
      said.push(`${s.name} ${fmt(last)}${unit}`);
    });
    svg.setAttribute("aria-label", said.join(", "));
  }

  // -- the overview --------------------------------------------------------------------
  function overview(status) {
    const url = status.dataset.live;
    const history = {}; // name -> [[t, v]]
    const last = {}; // host id -> its previous snapshot
    const rates = {}; // host id -> rates from its last two snapshots
    const clientsBefore = {};
    let clientsAt = null;

    const push = (name, t, v) => {
      const points = (history[name] = history[name] || []);
      points.push([t, v]);
      while (points.length && points[0][0] < t - HISTORY_S) points.shift();
    };
    const points = (name) => history[name] || [];

    function hostRates(h) {
      const p = last[h.id];
      if (!h.metrics) return null;
      if (p && h.at <= p.at) return rates[h.id] || null; // the same snapshot again
      last[h.id] = h;
      if (!p || !p.metrics) return null;
      const dt = h.at - p.at;
      const r = { jobs: {}, requests: Math.max(0, h.requests - p.requests) / dt, latency: [] };
      for (const k of Object.keys(h.jobs)) r.jobs[k] = Math.max(0, h.jobs[k] - (p.jobs[k] || 0)) / dt;
      h.latency.forEach((c, i) => r.latency.push(Math.max(0, c - (p.latency[i] || 0))));
      rates[h.id] = r;
      return r;
    }

    function onHosts(data) {
      const t = data.at;
      const hosts = data.hosts || [];
      const sum = { jobs: {}, requests: 0, latency: null, seen: 0 };
      let bounds = [];
      for (const h of hosts) {
        const r = hostRates(h);
        if (h.latency_bounds) bounds = h.latency_bounds;
        if (!r) continue;
        sum.seen++;
        for (const [k, v] of Object.entries(r.jobs)) sum.jobs[k] = (sum.jobs[k] || 0) + v;
        sum.requests += r.requests;
        sum.latency = sum.latency ? sum.latency.map((c, i) => c + r.latency[i]) : r.latency.slice();
      }
      for (const k of ["accepted", "succeeded", "failed", "rejected"]) {
        push("jobs." + k, t, sum.seen ? sum.jobs[k] || 0 : null);
      }
      push("requests", t, sum.seen ? sum.requests : null);
      push("p50", t, sum.latency ? quantile(0.5, bounds, sum.latency) : null);
      push("p99", t, sum.latency ? quantile(0.99, bounds, sum.latency) : null);
      const pools = {};
      for (const h of hosts) {
        for (const [pool, g] of Object.entries(h.pools || {})) {
          const acc = (pools[pool] = pools[pool] || {});
          for (const [k, v] of Object.entries(g)) acc[k] = (acc[k] || 0) + v;
        }
      }
      for (const pool of ["io", "cpu"]) {
        const g = pools[pool];
        push(pool + ".busy", t, g ? g.busy_slots : null);
        push(pool + ".queued", t, g ? g.queued_jobs : null);
      }
      renderPools(pools);
      renderHosts(hosts);
      for (const figure of document.querySelectorAll("figure[data-chart]")) {
        const unit = figure.dataset.unit;
        const chart = figure.dataset.chart;
        const series = {
          io: [["busy threads", "io.busy"], ["queued jobs", "io.queued"]],
          cpu: [["busy processes", "cpu.busy"], ["queued jobs", "cpu.queued"]],
          jobs: [["accepted", "jobs.accepted"], ["succeeded", "jobs.succeeded"],
                 ["failed", "jobs.failed"], ["rejected", "jobs.rejected"]],
          requests: [["requests", "requests"]],
          latency: [["median", "p50"], ["99th percentile", "p99"]],
        }[chart] || [];
        draw(figure, series.map(([name, key]) => ({ name, points: points(key) })), unit, t);
      }
    }

    function renderPools(pools) {
      const box = document.getElementById("pool-cards");
      if (!box) return;
      box.replaceChildren();
      const order = (name) => (name === "io" ? 0 : 1);
      for (const [pool, g] of Object.entries(pools).sort((a, b) => order(a[0]) - order(b[0]))) {
        const card = document.createElement("div");
        card.className = "card";
        const rows = [
          [pool === "io" ? "busy threads" : "busy processes", `${g.busy_slots} of ${g.slots}`],
          ["running jobs", g.running_jobs], ["queued jobs", g.queued_jobs],
          ["scheduled jobs", g.scheduled_jobs],
          ["admitted tasks", `${g.admitted_tasks} of ${g.admission_limit}`],
        ];
        card.innerHTML = "<h3></h3><dl></dl>";
        card.querySelector("h3").textContent = `${pool} pool`;
        const dl = card.querySelector("dl");
        for (const [k, v] of rows) {
          const dt = document.createElement("dt"); dt.textContent = k;
          const dd = document.createElement("dd"); dd.textContent = String(v);
          dl.append(dt, dd);
        }
        box.appendChild(card);
      }
    }

    function renderHosts(hosts) {
      const box = document.getElementById("hosts");
      if (!box) return;
      box.replaceChildren();
      for (const h of hosts) {
        const part = document.createElement("div");
        part.className = "host";
        const title = document.createElement("h3");
        title.textContent = `${h.host} (host ${h.id}), as of ${clock(h.at)}`;
        const wrap = document.createElement("div");
        wrap.className = "scroll";
        const table = document.createElement("table");
        table.innerHTML = "<thead><tr><th scope=col>Process</th><th scope=col class=num>PID</th>" +
          "<th scope=col>State</th><th scope=col class=num>CPU</th>" +
          "<th scope=col class=num>Memory</th><th scope=col>Running for</th></tr></thead><tbody></tbody>";
        const body = table.querySelector("tbody");
        for (const p of h.processes || []) {
          const tr = document.createElement("tr");
          const age = Math.max(0, h.at - p.started_at);
          const cells = [
            p.kind === "cpu" || p.kind === "forkserver" || p.kind === "tracker"
              ? `${p.kind === "cpu" ? "cpu process" : p.kind} of ${p.worker}` : p.kind,
            p.pid, p.status, fmt(p.cpu_percent) + " %", mb(p.rss_bytes),
            age < 3600 ? `${Math.floor(age / 60)} min ${Math.floor(age % 60)} s`
              : `${(age / 3600).toFixed(1)} h`,
          ];
          cells.forEach((c, i) => {
            const td = document.createElement("td");
            if (i === 1 || i === 3 || i === 4) td.className = "num";
            td.textContent = String(c);
            tr.appendChild(td);
          });
          body.appendChild(tr);
        }
        wrap.appendChild(table);
        part.append(title, wrap);
        box.appendChild(part);
      }
    }

    function renderClients(data) {
      const body = document.querySelector("#clients tbody");
      if (!body) return;
      body.replaceChildren();
      const dt = clientsAt === null ? null : data.at - clientsAt;
      for (const c of data.clients) {
        const before = clientsBefore[c.client];
        const rate = dt && before !== undefined ? Math.max(0, c.requests - before) / dt : null;
        clientsBefore[c.client] = c.requests;
        const tr = document.createElement("tr");
        const th = document.createElement("th");
        th.scope = "row";
        th.textContent = c.client;
        tr.appendChild(th);
        for (const v of [fmt(rate), fmt(c.requests, 0), fmt(c.inflight, 0), fmt(c.throttled, 0)]) {
          const td = document.createElement("td");
          td.className = "num";
          td.textContent = v;
          tr.appendChild(td);
        }
        body.appendChild(tr);
      }
      clientsAt = data.at;
    }

    every(async () => {
      let answer;
      try {
        answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      } catch (e) {
        status.textContent = "Cannot reach the service; trying again.";
        return;
      }
      if (answer.status === 401) {
        status.innerHTML = 'Your session has ended: <a href="/ui/login">log in again</a>.';
        return;
      }
      if (!answer.ok) {
        status.textContent = `The service answered ${answer.status}; trying again.`;
        return;
      }
      const data = await answer.json();
      if (data.hosts) onHosts(data);
      renderClients(data);
      status.textContent = `Live: updated ${clock(data.at)}, every ${POLL_MS / 1000} s.`;
      status.dataset.updates = String(Number(status.dataset.updates || 0) + 1);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const status = document.getElementById("live-status");
    if (status) overview(status);
    refreshRegions();
  });
})();

// labdispatch operations dashboard: reads /v1/dashboard every 10 s and draws it.
// Plain DOM and inline SVG, no framework and nothing fetched from elsewhere. Text from the
// ledger (reject reasons, destinations) is untrusted: it is only ever set as textContent.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 10000;
  // Older than this, an age is shown in the warning colour.
  const STALE_SECONDS = 600;
  // Okabe-Ito: distinguishable with the common colour-vision deficiencies.
  const SERIES = [
    { key: "received", label: "Received", colour: "#0072b2", dash: "" },
    { key: "delivered", label: "Delivered", colour: "#009e73", dash: "" },
    { key: "failed", label: "Failed", colour: "#d55e00", dash: "6 4" },
  ];
  const STATES = [
    ["pending", "Pending", "#56b4e9"],
    ["retrying", "Retrying", "#e69f00"],
    ["accepted", "Accepted", "#0072b2"],
    ["delivered", "Delivered", "#009e73"],
    ["read", "Read", "#00604a"],
    ["failed", "Failed", "#d55e00"],
    ["unroutable", "Unroutable", "#cc79a7"],
  ];
  const STAGE_LABELS = { route: "Route", seal: "Seal", send: "Send" };
  // The formats a laboratory sends (messages.format); another one is shown by its name.
  const FORMATS = {
    hl7v2: ["HL7 v2", "#0072b2"],
    "hprim-sante": ["HPRIM Santé", "#009e73"],
    "hprim-medecins": ["HPRIM Médecins", "#e69f00"],
  };
  const QUEUE_COLOUR = "#0072b2";

  let latest = null;

  // --- small DOM helpers ------------------------------------------------------------------

  const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);

  function node(tag, attrs, text, namespace) {
    const element = namespace
      ? document.createElementNS(namespace, tag)
      : document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null && value !== "") {
        element.setAttribute(name, String(value));
      }
    }
    if (text !== undefined && text !== null) element.textContent = String(text);
    return element;
  }
  const svg = (tag, attrs, text) => node(tag, attrs, text, SVG_NS);
  const html = (tag, attrs, text) => node(tag, attrs, text);

  function setText(id, text) {
    const element = byTestId(id);
    if (element) element.textContent = text;
  }

  // --- formatting ---------------------------------------------------------------------------

  const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const fmtInt = (n) => (n === null || n === undefined ? "—" : integer.format(n));

  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    const minutes = Math.floor(s / 60);
    if (minutes < 60) return `${minutes} min`;
    const hours = Math.floor(minutes / 60);
    if (hours < 24) return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
    const days = Math.floor(hours / 24);
    return hours % 24 ? `${days} d ${hours % 24} h` : `${days} d`;
  }

  const pad = (n) => String(n).padStart(2, "0");
  function fmtClock(iso, withSeconds = true) {
    const moment = new Date(iso);
    if (Number.isNaN(moment.getTime())) return "—";
    const hhmm = `${pad(moment.getHours())}:${pad(moment.getMinutes())}`;
    return withSeconds ? `${hhmm}:${pad(moment.getSeconds())}` : hhmm;
  }
  const sum = (values) => values.reduce((total, v) => total + v, 0);

  // A round upper bound for an axis: 1, 2, 2.5 or 5 times a power of ten.
  function niceMax(value) {
    if (value <= 4) return 4;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (step * power >= value) return step * power;
    }
    return 10 * power;
  }

  // --- charts -------------------------------------------------------------------------------

  // Per-minute lines of several series over the same minutes, with a y axis and hh:mm ticks.
  function lineChart(container, minutes, series) {
    container.replaceChildren();
    const width = Math.max(container.clientWidth, 320);
    const height = 250;
    const margin = { left: 44, right: 14, top: 10, bottom: 28 };
    const plotWidth = width - margin.left - margin.right;
    const plotHeight = height - margin.top - margin.bottom;
    const top = niceMax(Math.max(0, ...series.flatMap((s) => s.values)));
    const steps = minutes.length > 1 ? minutes.length - 1 : 1;
    const x = (i) => margin.left + (i * plotWidth) / steps;
    const y = (v) => margin.top + plotHeight - (v / top) * plotHeight;

    const chart = svg("svg", {
      width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "results received, delivered and failed per minute over the last hour",
    });
    for (let t = 0; t <= 4; t += 1) {
      const value = (top * t) / 4;
      chart.append(svg("line", { class: "grid", x1: margin.left, x2: width - margin.right, y1: y(value), y2: y(value) }));
      chart.append(svg("text", { x: margin.left - 8, y: y(value) + 4, "text-anchor": "end" }, fmtInt(value)));
    }
    chart.append(svg("line", { class: "axis", x1: margin.left, x2: width - margin.right, y1: y(0), y2: y(0) }));
    minutes.forEach((minute, i) => {
      if (i % 15 === 0 || i === minutes.length - 1) {
        const anchor = i === 0 ? "start" : i === minutes.length - 1 ? "end" : "middle";
        chart.append(svg("line", { class: "axis", x1: x(i), x2: x(i), y1: y(0), y2: y(0) + 4 }));
        chart.append(svg("text", { x: x(i), y: height - 8, "text-anchor": anchor }, fmtClock(minute, false)));
      }
    });
    for (const s of series) {
      const points = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      if (s.fill) {
        const area = `${x(0)},${y(0)} ${points} ${x(s.values.length - 1)},${y(0)}`;
        chart.append(svg("polygon", { points: area, fill: s.colour, "fill-opacity": 0.08 }));
      }
      chart.append(svg("polyline", {
        points, fill: "none", stroke: s.colour, "stroke-width": 2.5,
        "stroke-dasharray": s.dash, "stroke-linejoin": "round", "stroke-linecap": "round",
      }));
    }
    // One transparent band per minute carries the figures as a tooltip.
    const band = plotWidth / steps;
    minutes.forEach((minute, i) => {
      const rect = svg("rect", {
        x: x(i) - band / 2, y: margin.top, width: band, height: plotHeight, fill: "transparent",
      });
      const figures = series.map((s) => `${s.label.toLowerCase()} ${s.values[i]}`).join(", ");
      rect.append(svg("title", {}, `${fmtClock(minute, false)}: ${figures}`));
      chart.append(rect);
    });
    container.append(chart);
  }

  // Labelled horizontal bars, each with its figure written at the right and an optional
  // note under the bar. rows: {label, value, colour, testid, note, noteTestid, stale}.
  function barChart(container, rows, emptyText) {
    container.replaceChildren();
    if (!rows.length) {
      container.append(html("p", { class: "muted small" }, emptyText));
      return;
    }
    const width = Math.max(container.clientWidth, 240);
    const hasNotes = rows.some((r) => r.note !== undefined);
    const rowHeight = hasNotes ? 56 : 38;
    const height = rows.length * rowHeight;
    const top = Math.max(1, ...rows.map((r) => r.value || 0));
    const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
    rows.forEach((row, i) => {
      const y0 = i * rowHeight;
      chart.append(svg("text", { class: "label", x: 0, y: y0 + 15 }, row.label));
      chart.append(svg("text", {
        class: "value", x: width, y: y0 + 15, "text-anchor": "end", "data-testid": row.testid,
        "data-value": row.value,
      }, fmtInt(row.value)));
      chart.append(svg("rect", { class: "track", x: 0, y: y0 + 22, width, height: 10, rx: 3 }));
      const barWidth = row.value > 0 ? Math.max(3, (row.value / top) * width) : 0;
      chart.append(svg("rect", { x: 0, y: y0 + 22, width: barWidth, height: 10, rx: 3, fill: row.colour }));
      if (row.note !== undefined) {
        chart.append(svg("text", {
          class: row.stale ? "value note stale" : "note", x: 0, y: y0 + 48,
          "data-testid": row.noteTestid,
        }, row.note));
      }
    });
    container.append(chart);
  }

  // --- the figures --------------------------------------------------------------------------

  function renderKpis(data) {
    const t = data.throughput;
    const received = sum(t.received);
    setText("received-60min", fmtInt(received));
    setText("received-rate", (received / Math.max(1, t.received.length)).toFixed(1));
    setText("delivered-60min", fmtInt(sum(t.delivered)));
    setText("failed-60min", fmtInt(sum(t.failed)));
    const a = data.adoption;
    setText("adoption-active", fmtInt(a.active));
    setText("adoption-equipped", fmtInt(a.equipped));
    setText("adoption-percent", a.equipped ? `${Math.round((100 * a.active) / a.equipped)} %` : "—");
    setText("adoption-period", `${a.from} to ${a.to}`);
  }

  function renderThroughput(data) {
    const t = data.throughput;
    const series = SERIES.map((s) => ({ ...s, values: t[s.key], fill: s.key === "received" }));
    const legend = byTestId("throughput-legend");
    legend.replaceChildren(
      ...series.map((s) => {
        const key = html("span", { class: "key" });
        const swatch = html("span", { class: s.dash ? "swatch dashed" : "swatch" });
        swatch.style.borderTopColor = s.colour;
        key.append(swatch, `${s.label} `, html("strong", { "data-testid": `throughput-${s.key}` }, fmtInt(sum(s.values))));
        return key;
      }),
    );
    lineChart(byTestId("throughput-chart"), t.minutes, series);
  }

  function renderStates(data) {
    const rows = STATES.map(([state, label, colour]) => ({
      label, colour, value: data.deliveries_by_state[state] || 0, testid: `state-${state}`,
    }));
    barChart(byTestId("states-chart"), rows, "No deliveries");
  }

  function renderFormats(data) {
    const rows = Object.entries(data.received_by_format).map(([format, count]) => {
      const [label, colour] = FORMATS[format] || [format, "#999999"];
      return { label, colour, value: count, testid: `format-${format}` };
    });
    barChart(byTestId("formats-chart"), rows, "No format reported");
  }

  function renderStages(data) {
    const rows = data.stages.map((s) => ({
      label: STAGE_LABELS[s.stage] || s.stage,
      value: s.waiting,
      colour: "#0072b2",
      testid: `stage-${s.stage}-waiting`,
      note: s.oldest_age_seconds === null ? "nothing waiting" : `oldest waiting ${fmtAge(s.oldest_age_seconds)}`,
      noteTestid: `stage-${s.stage}-age`,
      stale: s.oldest_age_seconds !== null && s.oldest_age_seconds > STALE_SECONDS,
    }));
    barChart(byTestId("stages-chart"), rows, "No stages reported");
  }

  function renderBroker(data) {
    const pill = byTestId("broker-status");
    pill.textContent = data.broker.up ? "broker up" : "broker down";
    pill.className = data.broker.up ? "pill up" : "pill down";
    const container = byTestId("queues-chart");
    if (!data.broker.up) {
      container.replaceChildren(html("p", { class: "muted" }, "Queue depths unknown: the broker is not answering."));
      showBanner(`Queue depths unknown: ${data.broker.error || "the broker is not answering"}. The ledger's figures are current.`, false);
      return;
    }
    hideBanner();
    const rows = data.queues.map((q) => {
      const name = q.queue.replace(/^labdispatch\./, "");
      return { label: name, value: q.depth, colour: QUEUE_COLOUR, testid: `queue-${name}-depth` };
    });
    barChart(container, rows, "No queues");
  }

  function renderCircuits(data) {
    const list = byTestId("circuits");
    if (!data.circuits.length) {
      list.replaceChildren(html("li", { class: "empty" }, "Every destination is answering"));
      return;
    }
    list.replaceChildren(
      ...data.circuits.map((c) => {
        const item = html("li", { "data-testid": "circuit-row" });
        const until = c.open_until ? ` until ${fmtClock(c.open_until)}` : "";
        item.append(
          html("span", { class: "dest" }, c.destination),
          html("span", { class: `state ${c.state}` }, `${c.state}${until}`),
        );
        return item;
      }),
    );
  }

  function emptyRow(columns, text) {
    const row = html("tr");
    row.append(html("td", { class: "empty", colspan: columns }, text));
    return row;
  }

  function renderDestinations(data) {
    const body = byTestId("destinations");
    if (!data.slowest_destinations.length) {
      body.replaceChildren(emptyRow(4, "No delivery is waiting"));
      return;
    }
    body.replaceChildren(
      ...data.slowest_destinations.map((d) => {
        const row = html("tr", { "data-testid": "destination-row" });
        const age = html("td", { class: "num" });
        age.append(html("span", { class: d.oldest_age_seconds > STALE_SECONDS ? "stale" : "" }, fmtAge(d.oldest_age_seconds)));
        row.append(
          html("td", { class: "code", "data-testid": "destination-name" }, d.destination),
          html("td", { class: "num", "data-testid": "destination-open" }, fmtInt(d.open)),
          age,
          html("td", { class: "num", "data-testid": "destination-failed" }, fmtInt(d.failed_24h)),
        );
        return row;
      }),
    );
  }

  function renderRejects(data) {
    const body = byTestId("rejects");
    if (!data.recent_rejects.length) {
      body.replaceChildren(emptyRow(5, "No message refused"));
      return;
    }
    body.replaceChildren(
      ...data.recent_rejects.map((r) => {
        const row = html("tr", { "data-testid": "reject-row" });
        const ack = html("td");
        ack.append(html("span", { class: `ack ${r.ack_code}` }, r.ack_code));
        row.append(
          html("td", { class: "time", title: r.at }, fmtClock(r.at)),
          html("td", { "data-testid": "reject-laboratory" }, r.laboratory || "—"),
          html("td", { class: "code", "data-testid": "reject-control-id" }, r.control_id || "—"),
          ack,
          html("td", { class: "reason", "data-testid": "reject-reason" }, r.reason),
        );
        return row;
      }),
    );
  }

  function render(data) {
    renderKpis(data);
    renderThroughput(data);
    renderStates(data);
    renderFormats(data);
    renderStages(data);
    renderBroker(data);
    renderCircuits(data);
    renderDestinations(data);
    renderRejects(data);
    setText("updated-at", fmtClock(data.generated_at));
  }

  // --- refreshing ---------------------------------------------------------------------------

  function showBanner(text, bad) {
    const banner = byTestId("banner");
    banner.textContent = text;
    banner.className = bad ? "banner bad" : "banner";
    banner.hidden = false;
  }
  function hideBanner() {
    byTestId("banner").hidden = true;
  }

  async function refresh() {
    let response;
    try {
      response = await fetch("/v1/dashboard", {
        credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" },
      });
    } catch (error) {
      showBanner("The server cannot be reached; the figures shown may be out of date.", true);
      return;
    }
    if (response.status === 401 || response.status === 403) {
      window.location.assign("/"); // signed out, or the token was revoked: the sign-in form
      return;
    }
    if (!response.ok) {
      showBanner(`The server answered HTTP ${response.status}; the figures shown may be out of date.`, true);
      return;
    }
    latest = await response.json();
    render(latest);
    document.body.dataset.state = "ready";
  }

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => latest && render(latest), 150);
  });

  refresh();
  setInterval(refresh, REFRESH_MS);
})();

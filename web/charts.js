// Small time-series line charts on <canvas> for the live page. No dependencies, no build step.
//
//   const c = new TimeChart(canvasElement, { windowMs: 300000, decimals: 1, unit: 'ms' });
//   c.push(Date.now(), { p50: 12.5, p99: 80 });   // null or a missing series: a break in its line
//   c.draw();
//
// Series appear as they are first pushed, each with its own colour; the y axis starts at 0 and grows
// to the largest value in the window. `stats()` tells what the last draw put on the canvas (for tests).

const PALETTE = ['#58a6ff', '#3fb950', '#d29922', '#f85149', '#bc8cff', '#39c5cf', '#ff7b72', '#e3b341', '#8b98a5'];
const FONT = '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';

/** A round number at or above `v` (1, 2, 5 × 10^k), for the top of an axis. */
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmt(v, decimals) {
  if (Math.abs(v) >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (Math.abs(v) >= 1e4) return `${(v / 1e3).toFixed(0)}k`;
  return v.toFixed(decimals);
}

export class TimeChart {
  constructor(canvas, { windowMs = 300000, decimals = 0, unit = '' } = {}) {
    this.canvas = canvas;
    this.windowMs = windowMs;
    this.decimals = decimals;
    this.unit = unit;
    this.points = []; // [t, {series: value}]
    this.series = []; // names, in order of appearance
    this._stats = { points: 0, segments: 0, series: 0 };
  }

  push(t, values) {
    let added = false;
    for (const k of Object.keys(values)) {
      if (!this.series.includes(k)) {
        this.series.push(k);
        added = true;
      }
    }
    if (added) this.series.sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
    this.points.push([t, values]);
    const from = t - this.windowMs;
    while (this.points.length && this.points[0][0] < from) this.points.shift();
  }

  color(name) {
    return PALETTE[this.series.indexOf(name) % PALETTE.length];
  }

  stats() {
    return { ...this._stats };
  }

  draw(now = Date.now()) {
    const cv = this.canvas;
    const dpr = (typeof devicePixelRatio === 'number' && devicePixelRatio) || 1;
    const w = cv.clientWidth || 300;
    const h = cv.clientHeight || 120;
    if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
      cv.width = Math.round(w * dpr);
      cv.height = Math.round(h * dpr);
    }
    const g = cv.getContext('2d');
    if (!g) return;
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    g.font = FONT;
    const left = 44;
    const right = 8;
    const top = 18;
    const bottom = 16;
    const pw = Math.max(10, w - left - right);
    const ph = Math.max(10, h - top - bottom);
    let max = 0;
    for (const [, v] of this.points) for (const s of this.series) if (Number.isFinite(v[s]) && v[s] > max) max = v[s];
    const ymax = niceCeil(max);
    // The window, or less while the page is younger than it (at least 30 s).
    const first = this.points.length ? this.points[0][0] : now;
    const span = Math.min(this.windowMs, Math.max(30000, now - first));
    const t0 = now - span;
    const x = (t) => left + ((t - t0) / span) * pw;
    const y = (v) => top + ph - (v / ymax) * ph;

    // Grid and axes.
    g.strokeStyle = '#26313d';
    g.fillStyle = '#8b98a5';
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    const step = ymax / 2;
    const axisDecimals = Number.isInteger(step) ? 0 : step >= 0.1 ? 1 : 2;
    for (let i = 0; i <= 2; i++) {
      const v = step * i;
      const yy = Math.round(y(v)) + 0.5;
      g.beginPath();
      g.moveTo(left, yy);
      g.lineTo(left + pw, yy);
      g.stroke();
      g.fillText(fmt(v, axisDecimals), left - 4, yy);
    }
    g.textBaseline = 'top';
    const ago = (ms) => (ms >= 60000 ? `-${+(ms / 60000).toFixed(1)}m` : `-${Math.round(ms / 1000)}s`);
    for (const [f, label, align] of [[0, ago(span), 'left'], [0.5, ago(span / 2), 'center'], [1, 'now', 'right']]) {
      g.textAlign = align;
      g.fillText(label, left + f * pw, top + ph + 3);
    }

    // Lines.
    let segments = 0;
    g.lineWidth = 1.6;
    for (const s of this.series) {
      g.strokeStyle = this.color(s);
      g.beginPath();
      let pen = false;
      for (const [t, v] of this.points) {
        const val = v[s];
        if (!Number.isFinite(val) || t < t0) {
          pen = false;
          continue;
        }
        if (pen) {
          g.lineTo(x(t), y(val));
          segments += 1;
        } else {
          g.moveTo(x(t), y(val));
          pen = true;
        }
      }
      g.stroke();
    }

    // Legend: each series with its latest value.
    g.textAlign = 'left';
    g.textBaseline = 'top';
    let lx = left;
    const last = this.points.length ? this.points[this.points.length - 1][1] : {};
    for (const s of this.series) {
      const v = last[s];
      const text = `${s} ${Number.isFinite(v) ? fmt(v, this.decimals) : '—'}${this.unit}`;
      g.fillStyle = this.color(s);
      g.fillRect(lx, 5, 8, 8);
      g.fillStyle = '#c9d1d9';
      g.fillText(text, lx + 11, 3);
      lx += g.measureText(text).width + 22;
    }
    this._stats = { points: this.points.length, segments, series: this.series.length };
  }
}

/**
 * The q-quantile (0–1) of the observations between two scrapes of a Prometheus histogram, from its
 * cumulative buckets ({le: count} objects, le as numbers, +Inf included), interpolated linearly within
 * the bucket, as histogram_quantile does. null when nothing was observed in between.
 */
export function quantileBetween(prev, cur, q) {
  const les = Object.keys(cur).map(Number).sort((a, b) => a - b);
  const delta = les.map((le) => Math.max(0, (cur[le] ?? 0) - ((prev && prev[le]) ?? 0)));
  const total = delta[delta.length - 1];
  if (!(total > 0)) return null;
  const rank = q * total;
  for (let i = 0; i < les.length; i++) {
    if (delta[i] >= rank) {
      const lo = i === 0 ? 0 : les[i - 1];
      const hi = les[i];
      if (!Number.isFinite(hi)) return lo;
      const below = i === 0 ? 0 : delta[i - 1];
      const inBucket = delta[i] - below;
      return inBucket > 0 ? lo + ((hi - lo) * (rank - below)) / inBucket : hi;
    }
  }
  return null;
}

// pulsetrain: detector images drawn on a canvas under each image panel's Bokeh figure.
// The images come on a WebSocket of their own (see pulsetrain/gui/imagestream.py for the
// message layout and why); this script colour-maps them with a 256-entry table, draws them
// where the figure's frame is (following its zoom and pan), keeps the last one for the hover
// read-out and the tests (window.pulsetrain.images[key]) and acknowledges each image drawn.
(function () {
  "use strict";
  const channels = window.ptImageChannels || [];
  const pt = (window.pulsetrain = window.pulsetrain || { frames: {}, total: 0 });
  pt.frames = pt.frames || {};
  pt.images = pt.images || {};
  const base = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
  const decoder = new TextDecoder();

  function rgba(hex) {
    const v = parseInt(hex.slice(1, 7), 16);
    const r = (v >> 16) & 255, g = (v >> 8) & 255, b = v & 255;
    return ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0; // little-endian RGBA in a Uint32
  }

  function Panel(info) {
    this.info = info;
    this.lut = new Uint32Array(info.colours.map(rgba));
    this.off = document.createElement("canvas"); // the image at its own resolution
    this.octx = this.off.getContext("2d");
    this.pixels = null;
    this.canvas = document.createElement("canvas"); // on the page, under the figure's frame
    this.canvas.className = "pt-image-canvas";
    this.canvas.style.position = "absolute";
    this.canvas.style.pointerEvents = "none";
    this.view = null;
    this.image = null;
    this.counted = true;
    this.scheduled = false;
    this.retries = 0;
    this.waiting = false;
    this.connect();
  }

  Panel.prototype.connect = function () {
    const ws = new WebSocket(base + this.info.path + "?c=" + encodeURIComponent(this.info.token));
    ws.binaryType = "arraybuffer";
    ws.onopen = () => { this.retries = 0; };
    ws.onmessage = (ev) => this.received(ev.data, ws);
    ws.onclose = (ev) => {
      if (ev.code === 4404 || ev.code === 4000) { return; } // page gone, or a newer connection
      this.retries += 1;
      setTimeout(() => this.connect(), Math.min(5000, 250 * this.retries));
    };
  };

  Panel.prototype.received = function (buffer, ws) {
    const n = new DataView(buffer).getUint32(0, true);
    const meta = JSON.parse(decoder.decode(new Uint8Array(buffer, 4, n)));
    const size = meta.h * meta.w;
    meta.levels = new Uint8Array(buffer, meta.levels_at, size);
    meta.values = meta.values_at == null ? null : new Float32Array(buffer, meta.values_at, size);
    this.colour(meta);
    this.image = meta;
    pt.images[this.info.key] = meta;
    this.counted = false;
    this.draw();
    if (ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify({ ack: meta.push })); }
  };

  Panel.prototype.colour = function (meta) {
    if (this.off.width !== meta.w || this.off.height !== meta.h || this.pixels === null) {
      this.off.width = meta.w;
      this.off.height = meta.h;
      this.pixels = this.octx.createImageData(meta.w, meta.h);
    }
    const out = new Uint32Array(this.pixels.data.buffer);
    const lut = this.lut, px = meta.levels;
    for (let i = 0; i < px.length; i++) { out[i] = lut[px[i]]; }
    this.octx.putImageData(this.pixels, 0, 0);
  };

  // Find the figure's view once BokehJS has drawn it; put the canvas under its frame.
  Panel.prototype.attach = function () {
    if (this.view !== null && this.canvas.isConnected) { return true; }
    const B = window.Bokeh;
    if (!B || !B.documents || !B.documents.length || !B.index) { return false; }
    const model = B.documents[0].get_model_by_name(this.info.figure);
    const view = model ? B.index.find_one(model) : null;
    if (!view || !view.canvas_view || !view.frame) { return false; }
    this.view = view;
    this.canvas.style.position = "absolute";
    view.canvas_view.underlays_el.appendChild(this.canvas);
    const again = () => this.schedule();
    model.x_range.change.connect(again);
    model.y_range.change.connect(again);
    if (window.ResizeObserver) { new ResizeObserver(again).observe(view.canvas_view.el); }
    return true;
  };

  Panel.prototype.schedule = function () {
    if (this.scheduled) { return; }
    this.scheduled = true;
    requestAnimationFrame(() => { this.scheduled = false; this.draw(); });
  };

  Panel.prototype.draw = function () {
    const meta = this.image;
    if (meta === null) { return; }
    if (!this.attach()) { // the figure is not built yet: show the image in its place meanwhile
      if (this.early()) { this.counts(); }
      if (!this.waiting) {
        this.waiting = true;
        setTimeout(() => { this.waiting = false; this.draw(); }, 50);
      }
      return;
    }
    const frame = this.view.frame, bbox = frame.bbox;
    const c = this.canvas, ratio = window.devicePixelRatio || 1;
    const W = Math.max(1, Math.round(bbox.width * ratio)), H = Math.max(1, Math.round(bbox.height * ratio));
    if (c.width !== W || c.height !== H) { c.width = W; c.height = H; }
    const box = [bbox.left, bbox.top, bbox.width, bbox.height].map((v) => v + "px");
    if (c.style.left !== box[0]) { c.style.left = box[0]; }
    if (c.style.top !== box[1]) { c.style.top = box[1]; }
    if (c.style.width !== box[2]) { c.style.width = box[2]; }
    if (c.style.height !== box[3]) { c.style.height = box[3]; }
    const ctx = c.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, W, H);
    // data coordinates (full-resolution pixels, dw x dh) to the frame's pixels
    const x0 = frame.x_scale.compute(0) - bbox.left, x1 = frame.x_scale.compute(meta.dw) - bbox.left;
    const y0 = frame.y_scale.compute(0) - bbox.top, y1 = frame.y_scale.compute(meta.dh) - bbox.top;
    ctx.imageSmoothingEnabled = false;
    ctx.setTransform((ratio * (x1 - x0)) / meta.w, 0, 0, (ratio * (y1 - y0)) / meta.h, ratio * x0, ratio * y0);
    ctx.drawImage(this.off, 0, 0);
    this.counts();
  };

  Panel.prototype.counts = function () {
    if (this.counted) { return; } // an image reaching the screen: counted once
    this.counted = true;
    pt.frames[this.info.key] = (pt.frames[this.info.key] || 0) + 1;
    pt.total += 1;
    pt.last = performance.now();
    if (pt.first === undefined) { pt.first = pt.last; }
  };

  // Before BokehJS has built the page (seconds on a busy machine), the image is shown at the
  // top of its panel's place, in the figure's size, without axes.
  Panel.prototype.early = function () {
    const cell = document.querySelector('.pt-cell[data-root="' + this.info.root + '"]');
    const meta = this.image;
    if (!cell || meta === null) { return false; }
    const c = this.canvas;
    if (c.parentNode !== cell) {
      c.style.position = "static";
      c.style.display = "block";
      cell.prepend(c);
    }
    const scale = Math.min(this.info.size[0] / meta.w, this.info.size[1] / meta.h);
    const w = Math.max(1, Math.round(meta.w * scale)), h = Math.max(1, Math.round(meta.h * scale));
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    c.style.width = w + "px";
    c.style.height = h + "px";
    const ctx = c.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.off, 0, 0, w, h);
    return true;
  };

  // The figure's frame moves when the layout changes (axis labels, window size): follow it.
  setInterval(() => {
    for (const p of panels) {
      if (p.view === null || p.image === null) { continue; }
      const b = p.view.frame.bbox, s = p.canvas.style;
      if (s.left !== b.left + "px" || s.top !== b.top + "px" || s.width !== b.width + "px" ||
          s.height !== b.height + "px") { p.schedule(); }
    }
  }, 500);

  const panels = channels.map((info) => new Panel(info));
  pt.imagePanels = panels;
})();

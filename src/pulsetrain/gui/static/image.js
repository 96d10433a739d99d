// pulsetrain: detector images drawn on a canvas under each image panel's Bokeh figure.
// The images come on a WebSocket of their own (see pulsetrain/gui/imagestream.py for the
// message layout and why).  Each panel's canvas is handed to a Web Worker (image-render.js)
// that receives, colour-maps, draws and acknowledges the images by itself, so that they keep
// reaching the screen while BokehJS keeps the page's main thread busy.  This script finds
// where the figure's frame is (following zoom, pan and layout) and tells the worker, keeps the
// last image for the hover read-out and the tests (window.pulsetrain.images[key]) and counts
// the images drawn (window.pulsetrain.frames).
(function () {
  "use strict";
  const channels = window.ptImageChannels || [];
  const pt = (window.pulsetrain = window.pulsetrain || { frames: {}, total: 0 });
  pt.frames = pt.frames || {};
  pt.images = pt.images || {};
  const base = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;

  function rgba(hex) {
    const v = parseInt(hex.slice(1, 7), 16);
    const r = (v >> 16) & 255, g = (v >> 8) & 255, b = v & 255;
    return ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0; // little-endian RGBA in a Uint32
  }

  // The renderer's worker, from the source of image-render.js's two functions (on this page).
  let workerUrl = null;
  function makeWorker() {
    if (typeof Worker === "undefined" || typeof OffscreenCanvas === "undefined" ||
        !HTMLCanvasElement.prototype.transferControlToOffscreen) { return null; }
    try {
      if (workerUrl === null) {
        const source = "(" + ptImageWorkerMain + ")((" + ptImageRenderer + ")());";
        workerUrl = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
      }
      return new Worker(workerUrl);
    } catch (err) {
      console.info("pulsetrain: images drawn on the main thread (" + err + ")");
      return null;
    }
  }

  function Panel(info) {
    this.info = info;
    const lut = new Uint32Array(info.colours.map(rgba));
    const url = base + info.path + "?c=" + encodeURIComponent(info.token);
    this.canvas = document.createElement("canvas"); // on the page, under the figure's frame
    this.canvas.className = "pt-image-canvas";
    this.canvas.style.position = "absolute";
    this.canvas.style.pointerEvents = "none";
    this.view = null;
    this.image = null; // the last image's metadata, levels and values
    this.counted = true;
    this.waiting = false;
    this.placed = null; // the placement last sent (as JSON)
    this.snapshots = {};
    this.worker = makeWorker();
    if (this.worker !== null) {
      const off = this.canvas.transferControlToOffscreen();
      this.worker.onmessage = (ev) => this.message(ev.data);
      this.worker.postMessage({ type: "init", canvas: off, lut: lut, url: url }, [off]);
      this.renderer = null;
    } else {
      const Renderer = ptImageRenderer();
      this.renderer = new Renderer(this.canvas, lut, url, (msg) => this.message(msg));
    }
  }

  Panel.prototype.message = function (m) {
    if (m.type === "image") {
      this.image = m.meta;
      pt.images[this.info.key] = m.meta;
      this.counted = false;
      if (m.drawn) { this.counts(); }
      this.schedule();
    } else if (m.type === "drawn") {
      if (this.image !== null && this.image.push === m.push) { this.counts(); }
    } else if (m.type === "snapshot") {
      const done = this.snapshots[m.id];
      delete this.snapshots[m.id];
      if (done) { done(m); }
    }
  };

  Panel.prototype.place = function (placement) {
    const key = JSON.stringify(placement);
    if (key === this.placed) { return; }
    this.placed = key;
    if (this.worker !== null) {
      this.worker.postMessage({ type: "place", placement: placement });
    } else {
      this.renderer.place(placement);
    }
  };

  // What the canvas shows: a promise of {width, height, rgba} (for tests).
  Panel.prototype.snapshot = function () {
    if (this.worker === null) { return Promise.resolve(this.renderer.snapshot()); }
    const id = Math.random().toString(36).slice(2);
    return new Promise((resolve) => {
      this.snapshots[id] = resolve;
      this.worker.postMessage({ type: "snapshot", id: id });
    });
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
    this.canvas.style.display = "";
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
    requestAnimationFrame(() => { this.scheduled = false; this.layout(); });
  };

  // Tell the renderer where the image goes (it draws every image there by itself).
  Panel.prototype.layout = function () {
    const meta = this.image;
    if (meta === null) { return; }
    if (!this.attach()) { // the figure is not built yet: show the image in its place meanwhile
      this.early();
      if (!this.waiting) {
        this.waiting = true;
        setTimeout(() => { this.waiting = false; this.layout(); }, 50);
      }
      return;
    }
    const frame = this.view.frame, bbox = frame.bbox;
    const c = this.canvas, ratio = window.devicePixelRatio || 1;
    const box = [bbox.left, bbox.top, bbox.width, bbox.height].map((v) => v + "px");
    if (c.style.left !== box[0]) { c.style.left = box[0]; }
    if (c.style.top !== box[1]) { c.style.top = box[1]; }
    if (c.style.width !== box[2]) { c.style.width = box[2]; }
    if (c.style.height !== box[3]) { c.style.height = box[3]; }
    // data coordinates (full-resolution pixels, dw x dh) to the frame's CSS pixels
    this.place({
      mode: "frame",
      W: Math.max(1, Math.round(bbox.width * ratio)),
      H: Math.max(1, Math.round(bbox.height * ratio)),
      ratio: ratio,
      x0: frame.x_scale.compute(0) - bbox.left,
      x1: frame.x_scale.compute(meta.dw) - bbox.left,
      y0: frame.y_scale.compute(0) - bbox.top,
      y1: frame.y_scale.compute(meta.dh) - bbox.top,
    });
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
    if (!cell) { return; }
    const c = this.canvas;
    if (c.parentNode !== cell) {
      c.style.position = "static";
      c.style.display = "block";
      c.style.width = "";
      c.style.height = "";
      cell.prepend(c);
    }
    this.place({ mode: "early", size: this.info.size });
  };

  // The figure's frame moves when the layout changes (axis labels, window size): follow it.
  setInterval(() => {
    for (const p of panels) {
      if (p.view === null || p.image === null) { continue; }
      const b = p.view.frame.bbox, s = p.canvas.style;
      if (s.left !== b.left + "px" || s.top !== b.top + "px" || s.width !== b.width + "px" ||
          s.height !== b.height + "px") { p.schedule(); }
      else if (window.devicePixelRatio !== p.ratio) { p.ratio = window.devicePixelRatio; p.schedule(); }
    }
  }, 500);

  const panels = channels.map((info) => new Panel(info));
  pt.imagePanels = panels;
})();

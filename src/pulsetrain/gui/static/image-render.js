// pulsetrain: receiving and drawing one image panel's images (see imagestream.py for the
// message layout).  This function runs in a Web Worker of its own when the browser can hand a
// canvas to a worker (OffscreenCanvas), so that images arrive, are colour-mapped, drawn and
// acknowledged while the page's main thread is busy with BokehJS redrawing the other panels;
// otherwise (older browsers) image.js uses it on the main thread.  Both functions must stay
// self-contained: the worker is built from their source text.
function ptImageRenderer() {
  "use strict";
  const decoder = new TextDecoder();

  function surface(w, h) {
    if (typeof OffscreenCanvas !== "undefined") { return new OffscreenCanvas(w, h); }
    const c = document.createElement("canvas");
    c.width = w;
    c.height = h;
    return c;
  }

  // canvas: where the image is shown (an OffscreenCanvas from the page, or the page's canvas);
  // post(message, transfer): tells the page about each image ({type: "image", meta, drawn}) and
  // about an image drawn later ({type: "drawn", push}).
  function Renderer(canvas, lut, url, post) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.lut = lut;
    this.url = url;
    this.post = post;
    this.src = null; // the last image, colour-mapped, at its own resolution
    this.sctx = null;
    this.pixels = null;
    this.shape = null; // [w, h] of the last image
    this.push = -1; // its number
    this.reportedPush = -1; // the last image the page was told is on the canvas
    this.placement = null;
    this.retries = 0;
    this.connect();
  }

  Renderer.prototype.connect = function () {
    const ws = new WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => { this.retries = 0; };
    ws.onmessage = (ev) => this.received(ev.data, ws);
    ws.onclose = (ev) => {
      if (ev.code === 4404 || ev.code === 4000) { return; } // page gone, or a newer connection
      this.retries += 1;
      setTimeout(() => this.connect(), Math.min(5000, 250 * this.retries));
    };
  };

  Renderer.prototype.received = function (buffer, ws) {
    const n = new DataView(buffer).getUint32(0, true);
    const meta = JSON.parse(decoder.decode(new Uint8Array(buffer, 4, n)));
    const size = meta.h * meta.w;
    meta.levels = new Uint8Array(buffer, meta.levels_at, size);
    meta.values = meta.values_at == null ? null : new Float32Array(buffer, meta.values_at, size);
    this.colour(meta);
    this.push = meta.push;
    const drawn = this.draw();
    if (drawn) { this.reportedPush = meta.push; }
    if (ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify({ ack: meta.push })); }
    // The page keeps the image (hover read-out, tests); its buffer moves there without a copy.
    this.post({ type: "image", meta: meta, drawn: drawn }, [buffer]);
  };

  Renderer.prototype.colour = function (meta) {
    if (this.src === null || this.src.width !== meta.w || this.src.height !== meta.h) {
      this.src = surface(meta.w, meta.h);
      this.sctx = this.src.getContext("2d");
      this.pixels = this.sctx.createImageData(meta.w, meta.h);
    }
    const out = new Uint32Array(this.pixels.data.buffer);
    const lut = this.lut, px = meta.levels;
    for (let i = 0; i < px.length; i++) { out[i] = lut[px[i]]; }
    this.sctx.putImageData(this.pixels, 0, 0);
    this.shape = [meta.w, meta.h];
  };

  // Where the page wants the image: {mode: "early", size: [w, h]} (fit into that many CSS
  // pixels, before the figure exists) or {mode: "frame", W, H, ratio, x0, x1, y0, y1} (the
  // figure's frame: canvas pixels, and where data 0..dw, 0..dh fall in CSS pixels).
  Renderer.prototype.place = function (placement) {
    this.placement = placement;
    if (this.draw() && this.reportedPush !== this.push) { // an image that waited for a place
      this.reportedPush = this.push;
      this.post({ type: "drawn", push: this.push }, []);
    }
  };

  // Draw the last image where it belongs; whether it is on the canvas.
  Renderer.prototype.draw = function () {
    const p = this.placement, c = this.canvas, ctx = this.ctx;
    if (p === null || this.src === null) { return false; }
    if (p.mode === "early") {
      const [w0, h0] = this.shape;
      const scale = Math.min(p.size[0] / w0, p.size[1] / h0);
      const w = Math.max(1, Math.round(w0 * scale)), h = Math.max(1, Math.round(h0 * scale));
      if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(this.src, 0, 0, w, h);
    } else {
      if (c.width !== p.W || c.height !== p.H) { c.width = p.W; c.height = p.H; }
      const [w, h] = this.shape, r = p.ratio;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.clearRect(0, 0, p.W, p.H);
      ctx.imageSmoothingEnabled = false;
      ctx.setTransform((r * (p.x1 - p.x0)) / w, 0, 0, (r * (p.y1 - p.y0)) / h, r * p.x0, r * p.y0);
      ctx.drawImage(this.src, 0, 0);
    }
    return true;
  };

  // What the canvas shows (for tests): its size and RGBA bytes.
  Renderer.prototype.snapshot = function () {
    const c = this.canvas;
    return { width: c.width, height: c.height, rgba: this.ctx.getImageData(0, 0, c.width, c.height).data };
  };

  return Renderer;
}

// The worker's own code: the page sends {type: "init", canvas, lut, url}, then placements and
// snapshot requests.  image.js makes the worker from the source of these two functions.
function ptImageWorkerMain(Renderer) {
  "use strict";
  let renderer = null;
  self.onmessage = (ev) => {
    const m = ev.data;
    if (m.type === "init") {
      renderer = new Renderer(m.canvas, m.lut, m.url, (msg, transfer) => self.postMessage(msg, transfer));
    } else if (m.type === "place") {
      renderer.place(m.placement);
    } else if (m.type === "snapshot") {
      const s = renderer.snapshot();
      self.postMessage({ type: "snapshot", id: m.id, width: s.width, height: s.height, rgba: s.rgba }, [s.rgba.buffer]);
    }
  };
}

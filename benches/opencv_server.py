#!/usr/bin/env python3
"""The comparison server of `cargo bench --bench door`: a Python + OpenCV face server doing the same work
as facegate's /image, written the way a competent Python server would be, to measure facegate against.

Same models (YuNet through cv2.FaceDetectorYN, the MobileFaceNet ONNX through cv2.dnn), the same 5-point
ArcFace alignment (least-squares similarity, warpAffine to 112x112), the same blob normalisation and the
same cosine match (best sample per person) against facegate's own gallery.json. The standard library's
threaded http.server with keep-alive; each handler thread loads its own detector and network on its first
request (OpenCV's objects are not shared between threads), as facegate gives each worker its own.

Bodies: raw JPEG/PNG bytes (any Content-Type, recognised by their magic bytes), base64 text, or JSON
{"image": "<base64>"}. Answer: {"status": "granted"|"unknown"|"no_face", "identity", "score", "faces",
"timings": {decode_ms, detect_ms, align_ms, embed_ms, match_ms, total_ms}}.

Needs Debian's python3-opencv and python3-numpy (`scripts/install-deps --bench`). It serves a benchmark on
loopback, not a door: no auth beyond an optional bearer token, no door, no audit.
"""

import argparse
import base64
import binascii
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
# MobileFaceNet's contract in models/manifest.toml: RGB, ImageNet mean/std on 0..255 values.
MEAN = (123.675, 116.28, 103.53)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32).reshape(1, 3, 1, 1)
MAX_BODY = 16 * 1024 * 1024


def similarity(src, dst):
    """Least-squares similarity transform (rotation, uniform scale, shift) from src to dst points."""
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - src_mean, dst - dst_mean
    spread = (a * a).sum()
    dot = (a * b).sum()
    cross = (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum()
    s, r = dot / spread, cross / spread
    return np.array(
        [
            [s, -r, dst_mean[0] - (s * src_mean[0] - r * src_mean[1])],
            [r, s, dst_mean[1] - (r * src_mean[0] + s * src_mean[1])],
        ]
    )


class Gallery:
    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        names, rows = [], []
        for person in stored["people"]:
            for sample in person["samples"]:
                names.append(person["name"])
                rows.append(sample["vector"])
        self.names = names
        self.matrix = np.array(rows, dtype=np.float32)

    def best(self, embedding):
        if not self.names:
            return None, 0.0
        scores = self.matrix @ embedding
        i = int(np.argmax(scores))
        return self.names[i], float(scores[i])


class Pipeline:
    """One thread's detector and embedder."""

    def __init__(self, args):
        self.max_side = args.detect_max_side
        self.min_face_px = args.min_face_px
        self.detector = cv2.FaceDetectorYN.create(args.detector, "", (320, 320), 0.9, 0.3, 5000)
        self.input_size = (320, 320)
        self.net = cv2.dnn.readNetFromONNX(args.embedder)

    def run(self, data, gallery, threshold):
        t = {}
        start = time.perf_counter()
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if frame is None:
            raise ValueError("not a decodable JPEG or PNG")
        t["decode_ms"] = ms(start)

        start = time.perf_counter()
        h, w = frame.shape[:2]
        scale = min(1.0, self.max_side / max(w, h))
        small = frame
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        size = (small.shape[1], small.shape[0])
        if size != self.input_size:
            self.detector.setInputSize(size)
            self.input_size = size
        _, rows = self.detector.detect(small)
        faces = [] if rows is None else [r for r in rows if r[2] >= self.min_face_px]
        t["detect_ms"] = ms(start)
        answer = {"faces": len(faces), "timings": t}
        if not faces:
            answer["status"] = "no_face"
            t.update(align_ms=0.0, embed_ms=0.0, match_ms=0.0)
            return answer

        start = time.perf_counter()
        largest = max(faces, key=lambda r: r[2] * r[3])
        landmarks = largest[4:14].reshape(5, 2).astype(np.float64) / scale
        matrix = similarity(landmarks, ARCFACE_TEMPLATE)
        crop = cv2.warpAffine(frame, matrix, (112, 112), flags=cv2.INTER_LINEAR, borderValue=0)
        t["align_ms"] = ms(start)

        start = time.perf_counter()
        blob = cv2.dnn.blobFromImage(crop, 1.0, (112, 112), MEAN, swapRB=True, crop=False)
        blob /= STD
        self.net.setInput(blob)
        raw = self.net.forward().reshape(-1)
        embedding = raw / np.linalg.norm(raw)
        t["embed_ms"] = ms(start)

        start = time.perf_counter()
        name, score = gallery.best(embedding)
        t["match_ms"] = ms(start)
        granted = name is not None and score >= threshold
        answer.update(
            status="granted" if granted else "unknown",
            identity=name if granted else None,
            score=round(score, 4),
        )
        return answer


def ms(since):
    return (time.perf_counter() - since) * 1000.0


def image_bytes(body):
    """Raw JPEG/PNG as they are; JSON {"image": base64}; otherwise base64 text."""
    if body.startswith(b"\xff\xd8\xff") or body.startswith(b"\x89PNG\r\n\x1a\n"):
        return body
    text = body.strip()
    if text.startswith(b"{"):
        text = json.loads(text)["image"].encode("ascii")
    return base64.b64decode(text, validate=False)


def make_handler(args, gallery):
    local = threading.local()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle's algorithm the second would wait for the
        # client's delayed ACK (40 ms on Linux).
        disable_nagle_algorithm = True

        def log_message(self, *_):
            pass

        def answer(self, status, payload):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.answer(200 if self.path == "/healthz" else 404, {"status": "ok"})

        def do_POST(self):
            received = time.perf_counter()
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.close_connection = True
                return self.answer(413, {"status": "error", "error": "too_large"})
            body = self.rfile.read(length)
            if args.token and self.headers.get("Authorization") != f"Bearer {args.token}":
                return self.answer(401, {"status": "error", "error": "unauthorized"})
            if self.path != "/image":
                return self.answer(404, {"status": "error", "error": "not_found"})
            pipeline = getattr(local, "pipeline", None)
            if pipeline is None:
                pipeline = local.pipeline = Pipeline(args)
            try:
                data = image_bytes(body)
                answer = pipeline.run(data, gallery, args.threshold)
            except (ValueError, KeyError, binascii.Error) as err:
                return self.answer(400, {"status": "error", "error": "bad_image", "message": str(err)})
            answer["timings"]["total_ms"] = ms(received)
            self.answer(200, answer)

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--detector", required=True, help="YuNet ONNX file")
    parser.add_argument("--embedder", required=True, help="MobileFaceNet ONNX file")
    parser.add_argument("--gallery", required=True, help="facegate's gallery.json")
    parser.add_argument("--threshold", type=float, default=0.45)
    parser.add_argument("--detect-max-side", type=int, default=640)
    parser.add_argument("--min-face-px", type=float, default=40)
    parser.add_argument("--token", default="")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    gallery = Gallery(args.gallery)
    server = ThreadingHTTPServer((host, int(port)), make_handler(args, gallery))
    server.daemon_threads = True
    print(f"opencv_server listening on http://{host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

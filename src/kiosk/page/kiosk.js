// The door terminal. It shows the front camera mirrored, sends one JPEG frame at a time to the door's
// /image endpoint and shows each verdict in large type; a keypad sends visitor codes to /code with the
// current frame. The device token comes from pairing (#pair=<secret> in the address, traded once at
// /kiosk/pair) and lives in localStorage. document.body.dataset.state is always one of: idle,
// confirming, granted, denied, too_far, spoof, code, locked_out, offline, unpaired.
"use strict";

const TOKEN_KEY = "facegate.kiosk.token";
// Never two frames less than this apart (the original app's pace).
const FRAME_INTERVAL_MS = 150;
// After this many answers without a face the page slows to QUIET_INTERVAL_MS, until the next face.
const NO_FACE_BEFORE_QUIET = 5;
const QUIET_INTERVAL_MS = 500;
const BUSY_WAIT_MS = 1000;
// How long a verdict stays on screen before an empty hall turns it back to idle.
const VERDICT_MS = 3000;
const HELLO_EVERY_MS = 30000;
const KEYPAD_IDLE_MS = 30000;
const MAX_CODE_DIGITS = 16;
const JPEG_QUALITY = 0.8;
// Reconnection waits, doubling up to the last one.
const RETRY_MS = [500, 1000, 2000, 4000, 8000];

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let strings = {};
let token = null;
let verdictUntil = 0;
let lockedUntil = 0;
let keypadTimer = 0;
let lockoutTimer = 0;
let wakeLock = null;
// Wakes the frame loop when something it waits for changes (pairing, keypad closed, back online).
let nudge = () => {};

// ----------------------------------------------------------------------------------------------
// Strings

function t(key, values = {}) {
  let text = strings[key] ?? key;
  for (const [name, value] of Object.entries(values)) {
    text = text.replaceAll(`{${name}}`, String(value));
  }
  return text;
}

function languageCandidates() {
  const chosen = new URLSearchParams(location.search).get("lang");
  const wanted = chosen ? [chosen] : [...(navigator.languages ?? []), navigator.language];
  const codes = wanted
    .filter(Boolean)
    .map((tag) => tag.toLowerCase().split("-")[0])
    .filter((code) => /^[a-z]{2,3}$/.test(code));
  return [...new Set([...codes, "en"])];
}

async function loadStrings() {
  for (const code of languageCandidates()) {
    try {
      const reply = await fetch(`lang/${code}.json`, { cache: "no-cache" });
      if (reply.ok) {
        strings = await reply.json();
        document.documentElement.lang = code;
        break;
      }
    } catch {
      // The door is unreachable: the frame loop shows it; the built-in English stays.
    }
  }
  document.title = t("title");
  for (const element of document.querySelectorAll("[data-i18n]")) {
    element.textContent = t(element.dataset.i18n);
  }
}

// ----------------------------------------------------------------------------------------------
// What the screen says

function show(state, headline, detail = "", holdMs = 0) {
  document.body.dataset.state = state;
  $("headline").textContent = headline;
  $("detail").textContent = detail;
  verdictUntil = performance.now() + holdMs;
}

// Back to idle, unless a verdict is still being read or the keypad is open.
function settle(headline = t("idle"), detail = t("idle_detail")) {
  const state = document.body.dataset.state;
  if (state === "code" || state === "locked_out" || state === "unpaired") return;
  if (state !== "offline" && performance.now() < verdictUntil) return;
  show("idle", headline, detail);
}

function showUnpaired(detail = t("unpaired_detail")) {
  closeKeypad(false);
  show("unpaired", t("unpaired"), detail);
}

// A welcome says only what the relay did: `pending` (it has not reported yet) is not yet open.
function greet(answer, headline) {
  closeKeypad(false);
  const opened = ["opened", "extended", "already_open"].includes(answer.door);
  const detail = opened ? t("door_open") : answer.door === "pending" ? t("door_opening") : t("door_stays_locked");
  show("granted", headline, detail, VERDICT_MS);
}

// ----------------------------------------------------------------------------------------------
// Talking to the door

class Offline extends Error {}

// One request with the device token. Resolves to { status, body }; rejects with Offline when the door
// cannot be reached. A 401 means this tablet is not (or no longer) paired.
async function call(url, init = {}) {
  const headers = new Headers(init.headers);
  if (token) headers.set("Authorization", `Bearer ${token}`);
  let reply;
  try {
    reply = await fetch(url, { ...init, headers, cache: "no-store" });
  } catch {
    throw new Offline();
  }
  const body = await reply.json().catch(() => ({}));
  if (reply.status === 503 && body.error === "unavailable") throw new Offline();
  if (reply.status === 401) {
    token = null;
    showUnpaired();
  }
  return { status: reply.status, body };
}

let failures = 0;

function wentOffline() {
  failures += 1;
  if (document.body.dataset.state !== "unpaired") {
    closeKeypad(false);
    show("offline", t("offline"), t("offline_detail"));
  }
  return RETRY_MS[Math.min(failures, RETRY_MS.length) - 1];
}

function backOnline() {
  if (failures === 0) return;
  failures = 0;
  if (document.body.dataset.state === "offline") settle();
}

// The pairing link: #pair=<secret>. The secret leaves the address bar first thing, before the page
// waits for anything (its strings, the door), so that it is never left in the address or history.
function takePairingSecret() {
  const secret = new URLSearchParams(location.hash.slice(1)).get("pair");
  if (secret !== null) history.replaceState(null, "", location.pathname + location.search);
  return secret;
}

// Trades the secret once for the device token. A door that is busy, restarting or out of reach has
// not judged the link: it is tried again after a pause, and only a refusal reads "not valid".
async function pairWith(secret) {
  if (secret === null) return;
  show("idle", t("pairing"));
  let retries = 0;
  for (;;) {
    try {
      const reply = await fetch("pair", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ secret }),
        cache: "no-store",
      });
      const body = await reply.json().catch(() => ({}));
      if (reply.ok && typeof body.token === "string") {
        localStorage.setItem(TOKEN_KEY, body.token);
        failures = 0;
        return;
      }
      if (reply.status === 429 || reply.status >= 500) {
        retries += 1;
        await sleep(RETRY_MS[Math.min(retries, RETRY_MS.length) - 1]);
        continue;
      }
      // A tablet that is paired already keeps its token when an old link is opened again.
      if (localStorage.getItem(TOKEN_KEY) === null) showUnpaired(t("pair_failed"));
      return;
    } catch {
      await sleep(wentOffline());
    }
  }
}

// Is the token still good? At start and every 30 s; a revocation shows at once on the next frame anyway.
async function helloLoop() {
  for (;;) {
    let wait = HELLO_EVERY_MS;
    try {
      const stored = localStorage.getItem(TOKEN_KEY);
      if (stored) {
        token = stored;
        const reply = await call("hello");
        if (reply.status === 200) {
          backOnline();
          // Paired again (the tablets file was unreadable for a while, say): `settle` keeps the
          // unpaired screen by design, so leave it here, or no frame would be sent until a reload.
          if (document.body.dataset.state === "unpaired") show("idle", t("idle"), t("idle_detail"));
          nudge();
        }
      }
    } catch (error) {
      if (!(error instanceof Offline)) throw error;
      wait = wentOffline();
    }
    await sleep(wait);
  }
}

// ----------------------------------------------------------------------------------------------
// Camera and frames

const video = () => $("preview");
const canvas = document.createElement("canvas");

async function startCamera() {
  if (!navigator.mediaDevices?.getUserMedia) {
    document.body.dataset.camera = "insecure";
    settle(t("camera_insecure"), "");
    return;
  }
  for (;;) {
    try {
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: false,
        video: { facingMode: "user", width: { ideal: 1280 }, height: { ideal: 720 } },
      });
      video().srcObject = stream;
      await video().play();
      document.body.dataset.camera = "on";
      nudge();
      return;
    } catch {
      document.body.dataset.camera = "failed";
      settle(t("camera_failed"), "");
      await sleep(5000);
    }
  }
}

// The current camera picture as JPEG, unmirrored (the preview is mirrored by CSS only).
function grabFrame() {
  const source = video();
  if (source.readyState < HTMLMediaElement.HAVE_CURRENT_DATA || !source.videoWidth) {
    return Promise.resolve(null);
  }
  canvas.width = source.videoWidth;
  canvas.height = source.videoHeight;
  canvas.getContext("2d").drawImage(source, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
}

function canSendFrames() {
  const state = document.body.dataset.state;
  return token !== null && state !== "code" && state !== "unpaired" && !document.hidden;
}

// Waits `ms`, or less when nudged.
function pause(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    nudge = () => {
      clearTimeout(timer);
      resolve();
    };
  });
}

// One frame at a time: the next leaves only after the answer to this one, and never sooner than
// FRAME_INTERVAL_MS after it (or what the door asks for).
async function frameLoop() {
  let noFaces = 0;
  for (;;) {
    if (!canSendFrames()) {
      await pause(1000);
      continue;
    }
    const frame = await grabFrame();
    if (!frame) {
      await pause(200);
      continue;
    }
    const started = performance.now();
    let wait = FRAME_INTERVAL_MS;
    try {
      const { status, body } = await call("/image", {
        method: "POST",
        headers: { "Content-Type": "image/jpeg" },
        body: frame,
      });
      backOnline();
      if (status !== 401) wait = Math.max(wait, judge(body));
      // A door failing on every frame (500) is not asked again at full pace; `busy` says its own wait.
      if (status >= 500 && body.status !== "busy") wait = Math.max(wait, BUSY_WAIT_MS);
      noFaces = body.status === "no_face" ? noFaces + 1 : ["paused", "busy"].includes(body.status) ? noFaces : 0;
      if (noFaces >= NO_FACE_BEFORE_QUIET) wait = Math.max(wait, QUIET_INTERVAL_MS);
    } catch (error) {
      if (!(error instanceof Offline)) throw error;
      await pause(wentOffline());
      continue;
    }
    await pause(Math.max(0, started + wait - performance.now()));
  }
}

// Shows what an answer to a frame means; returns how long to wait before the next frame. Over the
// keypad (a frame may have been on its way when it opened) and a lockout's countdown, only a welcome
// is shown.
function judge(answer) {
  const busyElsewhere = performance.now() < lockedUntil || document.body.dataset.state === "code";
  const welcome = answer.status === "granted" && answer.door !== "confirming";
  if (busyElsewhere && !welcome) {
    return answer.status === "paused" || answer.status === "busy"
      ? (answer.retry_after_ms ?? BUSY_WAIT_MS)
      : FRAME_INTERVAL_MS;
  }
  switch (answer.status) {
    case "granted":
      if (answer.door === "confirming") {
        // More frames of this face are needed before the door may open: no welcome yet.
        show("confirming", t("confirming"), t("confirming_detail"));
      } else {
        greet(answer, t("granted", { name: answer.identity }));
      }
      return FRAME_INTERVAL_MS;
    case "paused":
      return answer.retry_after_ms ?? BUSY_WAIT_MS;
    case "busy":
      settle(t("wait"), t("wait_detail"));
      return answer.retry_after_ms ?? BUSY_WAIT_MS;
    case "unknown":
      show("denied", t("denied"), t("denied_detail"), VERDICT_MS);
      return FRAME_INTERVAL_MS;
    case "too_far":
      show("too_far", t("too_far"), t("too_far_detail"), VERDICT_MS / 2);
      return FRAME_INTERVAL_MS;
    case "spoof":
      show("spoof", t("spoof"), t("spoof_detail"), VERDICT_MS);
      return FRAME_INTERVAL_MS;
    default:
      // no_face, stale, or a refused frame: nothing for the person to read.
      settle();
      return FRAME_INTERVAL_MS;
  }
}

// ----------------------------------------------------------------------------------------------
// Visitor codes

function openKeypad() {
  if (performance.now() < lockedUntil) return;
  $("code").value = "";
  $("attempts").textContent = "";
  $("keypad").hidden = false;
  show("code", t("code"));
  touchKeypad();
}

function closeKeypad(toIdle = true) {
  clearTimeout(keypadTimer);
  $("keypad").hidden = true;
  $("code").value = "";
  if (toIdle && document.body.dataset.state === "code") {
    show("idle", t("idle"), t("idle_detail"));
    nudge();
  }
}

// The keypad closes by itself when nobody touches it.
function touchKeypad() {
  clearTimeout(keypadTimer);
  keypadTimer = setTimeout(() => closeKeypad(), KEYPAD_IDLE_MS);
}

function typeDigit(digit) {
  const input = $("code");
  if (input.value.length < MAX_CODE_DIGITS) input.value += digit;
  touchKeypad();
}

function lockOut(seconds) {
  closeKeypad(false);
  lockedUntil = performance.now() + seconds * 1000;
  clearInterval(lockoutTimer);
  const tick = () => {
    const left = Math.ceil((lockedUntil - performance.now()) / 1000);
    const state = document.body.dataset.state;
    if (left <= 0) {
      clearInterval(lockoutTimer);
      if (state === "locked_out") show("idle", t("idle"), t("idle_detail"));
      nudge();
      return;
    }
    // A face may still open the door during a lockout; its welcome stays while it is read.
    if (state === "granted" && performance.now() < verdictUntil) return;
    if (state === "unpaired" || state === "offline") return;
    show("locked_out", t("locked_out"), t("locked_out_detail", { s: left }));
  };
  tick();
  lockoutTimer = setInterval(tick, 1000);
}

async function submitCode(event) {
  event.preventDefault();
  const code = $("code").value.replace(/\D/g, "");
  // A second tap or Enter while the frame is encoded would send the code twice (two attempts).
  if (!code || $("submit-code").disabled) return;
  $("submit-code").disabled = true;
  touchKeypad();
  const form = new FormData();
  form.append("code", code);
  form.append("captured_at", new Date().toISOString());
  try {
    const frame = await grabFrame();
    if (frame) form.append("image", frame, "frame.jpg");
    const { status, body } = await call("/code", { method: "POST", body: form });
    backOnline();
    if (status === 401) return;
    if (body.status === "granted") {
      greet(body, t("granted_code"));
    } else if (body.status === "locked_out" || body.attempts_left === 0) {
      lockOut(body.retry_after_s ?? 60);
    } else {
      $("code").value = "";
      const left = body.attempts_left;
      const wrong = { denied: t("code_wrong"), not_allowed: t("code_not_now") }[body.status] ?? t("code_refused");
      $("attempts").textContent = left === undefined ? wrong : `${wrong}. ${t("attempts_left", { n: left })}`;
    }
  } catch (error) {
    if (!(error instanceof Offline)) throw error;
    wentOffline();
  } finally {
    $("submit-code").disabled = false;
  }
}

// ----------------------------------------------------------------------------------------------
// The screen: awake while shown, full screen from the first tap

async function keepAwake() {
  if (!("wakeLock" in navigator) || document.visibilityState !== "visible") return;
  if (wakeLock && !wakeLock.released) return;
  try {
    wakeLock = await navigator.wakeLock.request("screen");
  } catch {
    // Refused (battery saver, no user gesture yet): the next visibility change tries again.
  }
}

function wireControls() {
  $("open-keypad").addEventListener("click", openKeypad);
  $("close-keypad").addEventListener("click", () => closeKeypad());
  $("erase").addEventListener("click", () => {
    $("code").value = $("code").value.slice(0, -1);
    touchKeypad();
  });
  for (const key of document.querySelectorAll("[data-digit]")) {
    key.addEventListener("click", () => typeDigit(key.dataset.digit));
  }
  $("code").addEventListener("input", touchKeypad);
  $("keypad").addEventListener("submit", submitCode);
  // Full screen on the first tap's click, not its pointerdown: going full screen moves the layout,
  // and between pointerdown and pointerup it could slide the button away from the finger, so that the
  // first tap (on "Enter a visitor code", say) did nothing.
  document.addEventListener(
    "click",
    () => {
      if (!document.fullscreenElement) document.documentElement.requestFullscreen?.().catch(() => {});
      keepAwake();
    },
    { once: true },
  );
  // A pairing link opened in the tab that shows the page changes only the fragment: pair now.
  window.addEventListener("hashchange", () => {
    if (location.hash.startsWith("#pair=")) location.reload();
  });
  document.addEventListener("visibilitychange", () => {
    keepAwake();
    nudge();
  });
}

async function main() {
  const pairingSecret = takePairingSecret();
  wireControls();
  await loadStrings();
  show("idle", t("idle"), t("idle_detail"));
  await pairWith(pairingSecret);
  token = localStorage.getItem(TOKEN_KEY);
  if (token === null) {
    if (document.body.dataset.state !== "unpaired") showUnpaired();
  } else {
    settle();
  }
  keepAwake();
  startCamera();
  helloLoop();
  frameLoop();
}

main();

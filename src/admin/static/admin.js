// facegate admin: asks before destructive forms, and keeps the door state fresh (a small poll).
"use strict";
document.addEventListener("submit", (event) => {
  const question = event.target.getAttribute("data-confirm");
  if (question && !window.confirm(question)) event.preventDefault();
});
const doorState = document.getElementById("door-state");
if (doorState) {
  const url = doorState.getAttribute("data-status-url");
  const available = document.getElementById("door-available");
  const refresh = async () => {
    try {
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok) return;
      const status = await response.json();
      doorState.textContent = status.door;
      doorState.className = doorState.className.replace(/door-\w+/, "door-" + status.door);
      if (available) available.textContent = status.door_available ? "relay ready" : "relay unavailable";
      const contact = document.getElementById("door-contact");
      if (contact && contact.textContent !== "not fitted") contact.textContent = status.health.contact;
    } catch (_) { /* the next poll tries again */ }
  };
  setInterval(refresh, 2000);
}

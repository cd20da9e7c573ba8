/** DOM helpers, formatting, and errors in plain words. No framework: the page is a handful of forms and lists. */
import { CowatchError } from "@cowatch/client";

type Child = Node | string | number | false | null | undefined;
type Attrs = Record<string, string | number | boolean | EventListener | undefined | null>;

/** `h("button", { type: "button", onclick: fn }, "Book")`. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
  }
  return el;
}

/** What each stable error reason means to a person using the page. */
const REASONS: Record<string, string> = {
  EVENT_SOLD_OUT: "Sold out: there are not enough free seats left for that.",
  BOOKING_OVERLAP: "You already have a booking at that time.",
  ALREADY_BOOKED: "You already have a booking for this event.",
  HOST_CANNOT_BOOK: "You host this event, so you can't book a seat at it.",
  EVENT_NOT_FOUND: "Event not found. It may not exist, or it is private and the link has no valid invite.",
  EVENT_NOT_BOOKABLE: "This event can't be booked any more.",
  EVENT_NOT_OPEN: "This event is no longer open.",
  EVENT_ALREADY_STARTED: "This event has already started.",
  EVENT_NOT_EDITABLE: "This event can't be changed any more.",
  EVENT_NOT_CANCELLABLE: "This event can't be cancelled any more.",
  EVENT_NOT_COMPLETABLE: "This event can't be marked as held.",
  EVENT_NOT_ENDED: "The event hasn't ended yet: mark it held once it is over.",
  EVENT_NOT_HELD: "Reviews open once the host marks the event as held.",
  EVENT_NOT_PRIVATE: "Only private events have invite links.",
  UNKNOWN_USER: "Invitations go only to people who already use cowatch: check the user names.",
  INVITATION_QUOTA_EXCEEDED: "You have sent as many invitations as a host may today. Try again tomorrow.",
  ETAG_MISMATCH:
    "Someone else changed this event while you were editing. Reload to see the current version, then make your change again.",
  CONCURRENT_MODIFICATION: "Someone else changed this at the same moment. Reload and try again.",
  CAPACITY_BELOW_SEATS_TAKEN: "Capacity can't be lower than the seats already booked.",
  NOT_EVENT_HOST: "Only the host can do that.",
  NOT_BOOKING_GUEST: "That is not your booking.",
  BOOKING_NOT_FOUND: "Booking not found.",
  ALREADY_REVIEWED: "You have already reviewed that.",
  CANNOT_REVIEW_SELF: "You can't review yourself.",
  NOT_A_PARTICIPANT: "Only the host and the guests who took part can review this event.",
  SUBJECT_NOT_A_PARTICIPANT: "That person didn't take part in this event.",
  SUBJECT_NOT_ALLOWED: "You can't review that here.",
  USER_NOT_FOUND: "No such user.",
  TOKEN_MISSING: "Please sign in first.",
  TOKEN_EXPIRED: "Your sign-in has expired: please sign in again.",
  TOKEN_INVALID: "Your sign-in isn't valid: please sign in again.",
  UNAUTHENTICATED: "Please sign in first.",
  DATABASE_UNAVAILABLE: "The service can't be reached right now. Please try again in a moment.",
  DATABASE_TIMEOUT: "The service took too long to answer. Please try again.",
  SERVICE_STARTING: "The service is starting. Please try again in a moment.",
  INVALID_PAGE_TOKEN: "That page of results has expired: search again.",
  REQUEST_ID_REUSED: "That request was already made with different details. Please try again.",
  SERVER_OVERLOADED: "The service is busy right now. Please try again in a moment.",
  SHUTTING_DOWN: "The service is restarting. Please try again in a moment.",
  MALFORMED_REQUEST: "The request could not be read. Please try again.",
  Unavailable: "The service can't be reached right now. Please try again in a moment.",
  DeadlineExceeded: "The service took too long to answer. Please try again.",
  INVALID_ARGUMENT: "Some fields need fixing.",
  REVIEW_FROZEN: "Your review is already visible to the other person, so it can no longer be changed or withdrawn.",
  REVIEW_WINDOW_CLOSED: "The time for reviewing this event is over.",
  REVIEW_NOT_FOUND: "Review not found.",
  NOT_REVIEW_AUTHOR: "Only the person who wrote a review can change it.",
  WAITLIST_ENTRY_NOT_FOUND: "Waitlist place not found.",
  ALREADY_WAITLISTED: "You are already on the waitlist for this event.",
  SEATS_AVAILABLE: "There are enough free seats right now: book them instead of waiting.",
  NOT_WAITLIST_GUEST: "That is not your waitlist place.",
  NO_OPEN_OFFER: "There is no seat offer open for you: it may have expired or been declined.",
  BOOKING_NOT_CONFIRMED: "That booking is not confirmed, so attendance can't be marked.",
  ATTENDANCE_PERIOD_OVER: "Attendance can only be marked within 7 days after the event is held.",
  CALENDAR_NOT_FOUND: "That calendar link is no longer valid: make a new one from My bookings.",
  INVALID_NOTIFICATION: "That notification could not be read.",
};

/** Plain words for any error a call can throw. */
export function describe(err: unknown): string {
  if (err instanceof CowatchError) {
    const known = REASONS[err.reason];
    if (known) return known;
    if (err.violations.length) return REASONS.INVALID_ARGUMENT;
    return err.rawMessage || "Something went wrong.";
  }
  return "Something went wrong. Please try again.";
}

/** An alert region holding `err` in plain words (announced to screen readers). */
export function errorBox(err: unknown): HTMLElement {
  const box = h("p", { class: "error", role: "alert" }, describe(err));
  if (err instanceof CowatchError) box.dataset.reason = err.reason;
  return box;
}

export function notice(text: string, kind: "ok" | "info" = "ok"): HTMLElement {
  return h("p", { class: `notice ${kind}`, role: "status" }, text);
}

export const loading = (what = "Loading…"): HTMLElement => h("p", { class: "loading", "aria-busy": "true" }, what);

/** `start` in the event's own time zone: "Fri, 12 Dec 2026, 19:00 (Europe/Berlin)". */
export function formatTime(date: Date | undefined, timeZone?: string): string {
  if (!date) return "";
  try {
    const text = new Intl.DateTimeFormat(undefined, {
      weekday: "short",
      day: "numeric",
      month: "short",
      year: "numeric",
      hour: "2-digit",
      minute: "2-digit",
      timeZone: timeZone || undefined,
    }).format(date);
    return timeZone ? `${text} (${timeZone})` : text;
  } catch {
    return date.toISOString();
  }
}

export function formatRating(rating: { average: number; count: number } | undefined): string {
  if (!rating || rating.count === 0) return "no ratings yet";
  return `★ ${rating.average.toFixed(1)} (${rating.count} ${rating.count === 1 ? "rating" : "ratings"})`;
}

/** Attendance record in words: "came 3 of 4 (75 %)", or "no history" (never 0 % for someone never marked). */
export function formatReliability(r: { attended: number; noShow: number; hasHistory: boolean; ratio: number } | undefined): string {
  if (!r || !r.hasHistory) return "no history";
  return `came ${r.attended} of ${r.attended + r.noShow} (${Math.round(r.ratio * 100)} %)`;
}

/** Moves focus to `el` (made focusable) — after navigation, to the page heading. */
export function focus(el: HTMLElement | null): void {
  if (!el) return;
  if (!el.hasAttribute("tabindex")) el.setAttribute("tabindex", "-1");
  el.focus();
}

/**
 * A labelled form field whose error appears right under it: `field("event.title", "Title", input)`.
 * `name` is the request field path the server names in its violations.
 */
export function field(name: string, label: string, control: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement, hint?: string): HTMLElement {
  const id = `f-${name.replace(/[^a-z0-9]+/gi, "-")}`;
  control.id = id;
  control.name = name;
  const errorId = `${id}-error`;
  const hintId = hint ? `${id}-hint` : undefined;
  control.setAttribute("aria-describedby", [hintId, errorId].filter(Boolean).join(" "));
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    control,
    hint ? h("small", { id: hintId, class: "hint" }, hint) : null,
    h("span", { id: errorId, class: "field-error", "data-field": name }),
  );
}

/** Shows `err`'s field violations next to their fields in `form`; returns whether any matched. */
export function showFieldErrors(form: HTMLElement, err: unknown): boolean {
  for (const el of form.querySelectorAll<HTMLElement>(".field-error")) el.textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  if (!(err instanceof CowatchError)) return false;
  let first: HTMLElement | null = null;
  for (const v of err.violations) {
    const slot = form.querySelector<HTMLElement>(`.field-error[data-field="${CSS.escape(v.field)}"]`);
    const control = form.querySelector<HTMLElement>(`[name="${CSS.escape(v.field)}"]`);
    if (!slot || !control) continue;
    slot.textContent = v.description;
    control.setAttribute("aria-invalid", "true");
    first ??= control;
  }
  first?.focus();
  return first !== null;
}

export function input(attrs: Attrs = {}): HTMLInputElement {
  return h("input", attrs);
}

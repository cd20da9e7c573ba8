/** The event page a share link opens: details, seats, the host; booking for guests; tools for the host. */
import {
  Attendance,
  Booking_State,
  CowatchError,
  Code,
  Event_State,
  Event_Visibility,
  Review_State,
  Review_SubjectType,
  WaitlistEntry_State,
  timestampDate,
  type Booking,
  type Event,
  type Review,
  type WaitlistEntry,
} from "@cowatch/client";
import { api, currentUser, eventId, userId } from "../session";
import { errorBox, field, focus, formatRating, formatReliability, formatTime, h, input, loading, notice, showFieldErrors } from "../ui";
import { link, rerender } from "../router";

const STATE_LABEL: Record<number, string> = {
  [Event_State.SCHEDULED]: "Scheduled",
  [Event_State.CANCELLED]: "Cancelled",
  [Event_State.COMPLETED]: "Held",
};

export function eventPage(root: HTMLElement, id: string, invite: string): void {
  const wait = loading("Loading the event…");
  root.append(wait);
  void (async () => {
    let event: Event;
    try {
      event = await api.events.getEvent({ name: `events/${id}`, inviteToken: invite });
    } catch (err) {
      if (err instanceof CowatchError && err.code === Code.NotFound) {
        const heading = h("h1", {}, "Event not found");
        wait.replaceWith(
          heading,
          h("p", { "data-reason": err.reason }, "This event doesn't exist, or it is private and this link has no valid invite. Ask the host for the current link."),
          h("p", {}, link("/", "Discover public events")),
        );
        focus(heading);
      } else wait.replaceWith(errorBox(err));
      return;
    }
    wait.remove();
    await render(root, event, invite);
  })();
}

async function render(root: HTMLElement, e: Event, invite: string): Promise<void> {
  const me = currentUser();
  const isHost = me !== null && userId(e.host) === me.id;
  const start = e.startTime ? timestampDate(e.startTime) : undefined;
  const end = e.endTime ? timestampDate(e.endTime) : undefined;
  const soldOut = e.seatsAvailable <= 0;
  const heading = h("h1", {}, e.title);
  const hostId = userId(e.host);
  const hostBox = h("section", { class: "host", "aria-label": "Host" },
    h("h2", {}, "Host"),
    h("p", {}, link(`/hosts/${hostId}`, e.hostDisplayName || hostId), " ", h("span", { class: "rating", "data-testid": "host-rating" }, formatRating(e.hostRating))),
  );
  root.append(
    h("p", { class: `badge state-${STATE_LABEL[e.state]?.toLowerCase()}` }, STATE_LABEL[e.state] ?? ""),
    heading,
    h("p", { class: "film" }, `Film: ${e.film?.title ?? ""}`),
    e.description ? h("p", {}, e.description) : "",
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "When"),
      h("dd", {}, formatTime(start, e.timeZone), end ? ` — ${Math.round((end.getTime() - (start?.getTime() ?? 0)) / 60000)} min` : ""),
      h("dt", {}, "Where"),
      h("dd", { "data-testid": "place" }, e.addressHidden ? `${e.place?.city ?? ""} (the exact address is shown once you have booked)` : `${e.place?.name ?? ""}, ${e.place?.address ?? ""}, ${e.place?.city ?? ""}`),
      h("dt", {}, "Seats"),
      h(
        "dd",
        { "data-testid": "seats" },
        e.state !== Event_State.SCHEDULED
          ? `${e.seatsTaken} of ${e.capacity} booked`
          : soldOut
            ? h("strong", { class: "badge sold-out" }, "Sold out")
            : `${e.seatsAvailable} of ${e.capacity} left`,
        e.state === Event_State.SCHEDULED && e.waitlistSize > 0 ? h("span", { "data-testid": "waitlist-size" }, ` · ${e.waitlistSize} on the waitlist`) : "",
      ),
      h("dt", {}, "Visibility"),
      h("dd", {}, e.visibility === Event_Visibility.PRIVATE ? "Private (invite only)" : "Public"),
    ),
    hostBox,
    e.state === Event_State.SCHEDULED ? calendarButton(e, invite) : "",
  );
  focus(heading);
  void hostProfileSummary(hostBox, hostId);
  if (!me) {
    root.append(h("p", {}, link(`/signin?next=${encodeURIComponent(location.pathname + location.search)}`, "Sign in"), e.state === Event_State.SCHEDULED ? " to book a seat." : "."));
    return;
  }
  if (isHost) hostTools(root, e);
  else await guestTools(root, e, invite);
}

async function hostProfileSummary(box: HTMLElement, hostId: string): Promise<void> {
  try {
    const profile = await api.reviews.getHostProfile({ name: `users/${hostId}/hostProfile` });
    box.append(h("p", {}, `${profile.heldEventCount} ${profile.heldEventCount === 1 ? "event" : "events"} held · `, link(`/hosts/${hostId}`, "see the host's profile")));
  } catch {
    /* the rating on the event is enough */
  }
}

// ---------------------------------------------------------------------------------------------- guest

async function guestTools(root: HTMLElement, e: Event, invite: string): Promise<void> {
  const section = h("section", { "aria-labelledby": "booking-h" }, h("h2", { id: "booking-h" }, "Your booking"));
  root.append(section);
  let mine: Booking | undefined;
  try {
    for await (const b of api.listBookings({})) {
      if (b.event === e.name && b.state === Booking_State.CONFIRMED) {
        mine = b;
        break;
      }
    }
  } catch (err) {
    section.append(errorBox(err));
  }
  if (mine) {
    const booking = mine;
    section.append(notice(`You have booked ${booking.seats} ${booking.seats === 1 ? "seat" : "seats"}.`));
    if (e.state === Event_State.SCHEDULED) {
      const status = h("div", { "aria-live": "polite" });
      const cancel = h("button", { type: "button", class: "secondary" }, "Cancel my booking");
      cancel.addEventListener("click", async () => {
        cancel.disabled = true;
        try {
          await api.bookings.cancelBooking({ name: booking.name });
          rerender();
        } catch (err) {
          status.replaceChildren(errorBox(err));
          cancel.disabled = false;
        }
      });
      section.append(cancel, status);
    }
  } else if (e.state === Event_State.SCHEDULED) {
    const entry = await myWaitlistEntry(e);
    if (entry) section.append(waitlistStatus(e, entry));
    else if (e.seatsAvailable <= 0) {
      section.append(h("p", { class: "sold-out-note", role: "status" }, "Sold out: every seat is taken."), joinWaitlistForm(e, invite));
    } else {
      section.append(
        bookForm(e, invite),
        h("details", { class: "more-seats" }, h("summary", {}, "Need more seats than are left? Join the waitlist"), joinWaitlistForm(e, invite)),
      );
    }
  } else {
    section.append(h("p", {}, "You didn't book this event."));
  }
  if (e.state === Event_State.COMPLETED && mine) {
    root.append(
      h("section", { "aria-labelledby": "review-h" },
        h("h2", { id: "review-h" }, "Your reviews"),
        reviewForm(e, Review_SubjectType.EVENT, "", "Rate the event"),
        reviewForm(e, Review_SubjectType.HOST, e.host, `Rate the host, ${e.hostDisplayName || userId(e.host)}`),
      ),
    );
  }
}

function bookForm(e: Event, invite: string): HTMLElement {
  const seats = input({ type: "number", value: 1, min: 1, max: Math.min(e.seatsAvailable, 10), required: true });
  const status = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, "Book");
  const form = h("form", { class: "book" }, field("booking.seats", "Seats", seats), submit, status);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    status.replaceChildren(loading("Booking…"));
    try {
      await api.bookings.createBooking({ booking: { event: e.name, seats: Number(seats.value) }, inviteToken: invite });
      rerender();
    } catch (err) {
      showFieldErrors(form, err);
      status.replaceChildren(errorBox(err));
      submit.disabled = false;
    }
  });
  return form;
}

/** A button that runs `run`, then re-renders the page; a refusal is shown (and focused) in `status`. */
function actionButton(status: HTMLElement, label: string, run: () => Promise<unknown>, attrs: Record<string, string>, onStart?: () => void): HTMLButtonElement {
  const button = h("button", { type: "button", ...attrs }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    onStart?.();
    try {
      await run();
      rerender();
    } catch (err) {
      const box = errorBox(err);
      status.replaceChildren(box);
      focus(box);
      button.disabled = false;
    }
  });
  return button;
}

// ---------------------------------------------------------------------------------------------- waitlist

/** The page remembers the caller's waitlist entry per event (the API has no "my entries" list). */
const entryKey = (e: Event): string => `cowatch.waitlist.${currentUser()?.id ?? ""}.${eventId(e.name)}`;

async function myWaitlistEntry(e: Event): Promise<WaitlistEntry | null> {
  const name = localStorage.getItem(entryKey(e));
  if (!name) return null;
  try {
    const entry = await api.bookings.getWaitlistEntry({ name });
    if (entry.state === WaitlistEntry_State.WAITING || entry.state === WaitlistEntry_State.OFFERED) return entry;
  } catch {
    /* gone: forget it below */
  }
  localStorage.removeItem(entryKey(e));
  return null;
}

function joinWaitlistForm(e: Event, invite: string): HTMLElement {
  const seats = input({ type: "number", value: 1, min: 1, max: 10, required: true });
  const status = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, "Join waitlist");
  const form = h(
    "form",
    { class: "waitlist", "aria-label": "Join the waitlist" },
    h("p", {}, e.waitlistSize > 0 ? `${e.waitlistSize} ${e.waitlistSize === 1 ? "person is" : "people are"} waiting. ` : "", "When seats free up, they are offered in turn and held for you for a while."),
    field("waitlist_entry.seats", "Seats wanted", seats),
    submit,
    status,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    try {
      const entry = await api.bookings.joinWaitlist({ parent: e.name, waitlistEntry: { seats: Number(seats.value) }, inviteToken: invite });
      localStorage.setItem(entryKey(e), entry.name);
      rerender();
    } catch (err) {
      if (err instanceof CowatchError && err.reason === "ALREADY_WAITLISTED" && err.info.waitlist_entry) {
        localStorage.setItem(entryKey(e), err.info.waitlist_entry);
        rerender();
        return;
      }
      showFieldErrors(form, err);
      status.replaceChildren(errorBox(err));
      submit.disabled = false;
    }
  });
  return form;
}

function waitlistStatus(e: Event, entry: WaitlistEntry): HTMLElement {
  const status = h("div", { "aria-live": "polite" });
  const seats = `${entry.seats} ${entry.seats === 1 ? "seat" : "seats"}`;
  const act = (label: string, run: () => Promise<unknown>, cls = ""): HTMLButtonElement => actionButton(status, label, run, { class: cls });
  const leave = act("Leave waitlist", () => api.bookings.leaveWaitlist({ name: entry.name }), "secondary");
  if (entry.state === WaitlistEntry_State.OFFERED) {
    const until = formatTime(entry.offerExpireTime ? timestampDate(entry.offerExpireTime) : undefined, e.timeZone);
    return h(
      "div",
      { class: "offer", "data-testid": "waitlist-offer" },
      h("p", { class: "notice ok", role: "status" }, `Seats freed up: ${seats} ${entry.seats === 1 ? "is" : "are"} held for you until ${until}. Claim them to book, or decline to pass them on.`),
      h("div", { class: "actions" }, act("Claim the seats", () => api.bookings.claimOffer({ name: entry.name })), act("Decline", () => api.bookings.declineOffer({ name: entry.name }), "secondary")),
      status,
    );
  }
  return h(
    "div",
    { class: "waiting", "data-testid": "waitlist-entry" },
    notice(`You are number ${entry.position} on the waitlist for ${seats}.`, "info"),
    leave,
    status,
  );
}

function calendarButton(e: Event, invite: string): HTMLElement {
  const status = h("span", { "aria-live": "polite" });
  const button = h("button", { type: "button", class: "secondary" }, "Add to calendar");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const body = await api.events.exportEventCalendar({ name: e.name, inviteToken: invite });
      const url = URL.createObjectURL(new Blob([body.data as BlobPart], { type: body.contentType || "text/calendar" }));
      const a = h("a", { href: url, download: `${eventId(e.name)}.ics` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
      status.replaceChildren(" Calendar file downloaded.");
    } catch (err) {
      status.replaceChildren(errorBox(err));
    } finally {
      button.disabled = false;
    }
  });
  return h("p", { class: "calendar" }, button, status);
}

// ---------------------------------------------------------------------------------------------- reviews

/** The caller's own review after sending it: hidden until both sides reviewed (or the window closes); withdrawable meanwhile. */
function reviewState(r: Review): HTMLElement[] {
  const ofEvent = r.subjectType === Review_SubjectType.EVENT;
  if (r.state !== Review_State.PENDING_REVEAL) return [notice("Thanks — your review is saved. You have both reviewed each other, so it is visible now.")];
  const close = formatTime(r.windowCloseTime ? timestampDate(r.windowCloseTime) : undefined);
  const status = h("div", { "aria-live": "polite" });
  const withdraw = h("button", { type: "button", class: "secondary" }, "Withdraw review");
  withdraw.addEventListener("click", async () => {
    withdraw.disabled = true;
    try {
      await api.reviews.deleteReview({ name: r.name });
      rerender();
    } catch (err) {
      status.replaceChildren(errorBox(err));
      withdraw.disabled = false;
    }
  });
  return [
    h("p", { class: "notice info", role: "status", "data-testid": "review-pending" }, ofEvent
        ? `Thanks — your review is saved. Reviews of the event stay hidden until reviewing closes, ${close}; until then you can withdraw it.`
        : `Thanks — your review is saved. It stays hidden until both of you have reviewed each other, or until ${close}.`),
    withdraw,
    status,
  ];
}

function reviewForm(e: Event, subjectType: Review_SubjectType, subjectUser: string, label: string): HTMLElement {
  const rating = h("select", { required: true }, ...[5, 4, 3, 2, 1].map((n) => h("option", { value: String(n) }, `${n} ${"★".repeat(n)}`)));
  const text = h("textarea", { rows: 2, maxlength: 2000 });
  const status = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, "Send review");
  const key = `${subjectType}-${subjectUser.replace(/\W+/g, "-")}`;
  const form = h(
    "form",
    { class: "review", "aria-label": label },
    h("h3", {}, label),
    field(`review.rating`, "Rating", rating),
    field(`review.text`, "Comment (optional)", text),
    submit,
    status,
  );
  // Several review forms on one page: make the ids unique.
  for (const el of form.querySelectorAll<HTMLElement>("[id]")) el.id = `${el.id}-${key}`;
  for (const el of form.querySelectorAll<HTMLLabelElement>("label[for]")) el.htmlFor = `${el.htmlFor}-${key}`;
  for (const el of form.querySelectorAll<HTMLElement>("[aria-describedby]"))
    el.setAttribute("aria-describedby", el.getAttribute("aria-describedby")!.split(" ").map((s) => `${s}-${key}`).join(" "));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    try {
      const review = await api.reviews.createReview({
        review: { event: e.name, subjectType, subjectUser, rating: Number(rating.value), text: text.value.trim() },
      });
      form.replaceChildren(h("h3", {}, label), ...reviewState(review));
    } catch (err) {
      showFieldErrors(form, err);
      status.replaceChildren(errorBox(err));
      submit.disabled = false;
    }
  });
  return form;
}

// ---------------------------------------------------------------------------------------------- host

function hostTools(root: HTMLElement, e: Event): void {
  const id = eventId(e.name);
  const status = h("div", { "aria-live": "polite", class: "host-status" });
  const shareInput = input({ readonly: true, value: e.shareLink, "data-testid": "share-link" });
  const tools = h("section", { "aria-labelledby": "host-h", class: "host-tools" }, h("h2", { id: "host-h" }, "You host this event"));
  tools.append(field("share_link", e.visibility === Event_Visibility.PRIVATE ? "Invite link (private: only people with this link can see and book)" : "Share link", shareInput), status);

  const act = (label: string, run: () => Promise<unknown>, cls = ""): HTMLButtonElement =>
    actionButton(status, label, run, { class: cls }, () => status.replaceChildren(loading()));

  const actions = h("div", { class: "actions" });
  if (e.state === Event_State.SCHEDULED) {
    actions.append(link(`/events/${id}/edit`, "Edit event", { class: "button" }));
    actions.append(act("Mark as held", () => api.events.completeEvent({ name: e.name, etag: e.etag })));
    if (e.visibility === Event_Visibility.PRIVATE) actions.append(act("Rotate invite link", () => api.events.rotateInviteToken({ name: e.name })));
    const confirm = act("Yes, cancel the event", () => api.events.cancelEvent({ name: e.name, etag: e.etag }), "danger");
    confirm.hidden = true;
    const cancel = h("button", { type: "button", class: "secondary" }, "Cancel event…");
    cancel.addEventListener("click", () => {
      confirm.hidden = false;
      status.replaceChildren(notice("Cancelling notifies every guest and cancels their bookings.", "info"));
      confirm.focus();
    });
    actions.append(cancel, confirm);
  }
  tools.append(actions);
  if (e.state === Event_State.SCHEDULED) tools.append(inviteForm(e));
  root.append(tools);
  void guestList(root, e);
  if (e.state === Event_State.SCHEDULED) void waitlist(root, e);
}

async function waitlist(root: HTMLElement, e: Event): Promise<void> {
  const section = h("section", { "aria-labelledby": "waitlist-h" }, h("h2", { id: "waitlist-h" }, "Waitlist"));
  const body = loading("Loading the waitlist…");
  section.append(body);
  root.append(section);
  try {
    const res = await api.bookings.listWaitlist({ parent: e.name, pageSize: 100 });
    if (res.waitlistEntries.length === 0) {
      body.replaceWith(h("p", { class: "empty" }, "Nobody is waiting."));
      return;
    }
    body.replaceWith(
      h(
        "table",
        { class: "guests", "data-testid": "waitlist" },
        h("caption", { class: "visually-hidden" }, "People waiting for seats, in turn"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "#"), h("th", { scope: "col" }, "Guest"), h("th", { scope: "col" }, "Seats"), h("th", { scope: "col" }, "State"), h("th", { scope: "col" }, "Came to booked events"))),
        h(
          "tbody",
          {},
          res.waitlistEntries.map((w) =>
            h(
              "tr",
              {},
              h("td", {}, w.position || ""),
              h("td", {}, w.guestDisplayName || userId(w.guest)),
              h("td", {}, w.seats),
              h("td", {}, w.state === WaitlistEntry_State.OFFERED ? `offered until ${formatTime(w.offerExpireTime ? timestampDate(w.offerExpireTime) : undefined, e.timeZone)}` : "waiting"),
              h("td", {}, formatReliability(w.guestReliability)),
            ),
          ),
        ),
      ),
    );
    if (res.nextPageToken) section.append(h("p", {}, "Showing the first 100."));
  } catch (err) {
    body.replaceWith(errorBox(err));
  }
}

function inviteForm(e: Event): HTMLElement {
  const users = input({ placeholder: "guest-user, alice" });
  const message = input({});
  const status = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, "Send invitations");
  const form = h("form", { class: "invite", "aria-label": "Invite people" }, h("h3", {}, "Invite people"), field("users", "User ids (comma separated)", users), field("message", "Message (optional)", message), submit, status);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    try {
      const ids = users.value.split(",").map((s) => s.trim()).filter(Boolean);
      const res = await api.events.sendInvitations({ name: e.name, users: ids.map((u) => `users/${u}`), message: message.value.trim() });
      status.replaceChildren(notice(`Invitation sent to ${res.users.map(userId).join(", ")}.`));
      users.value = "";
    } catch (err) {
      showFieldErrors(form, err);
      status.replaceChildren(errorBox(err));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

async function guestList(root: HTMLElement, e: Event): Promise<void> {
  const section = h("section", { "aria-labelledby": "guests-h" }, h("h2", { id: "guests-h" }, "Guests"));
  const body = loading("Loading the guest list…");
  section.append(body);
  root.append(section);
  try {
    const guests = [];
    for await (const g of api.listEventGuests({ parent: e.name })) guests.push(g);
    if (guests.length === 0) {
      body.replaceWith(h("p", { class: "empty" }, "No guests yet."));
      return;
    }
    const held = e.state === Event_State.COMPLETED;
    const status = h("div", { "aria-live": "polite" });
    const mark = (bookingName: string, who: string, attendance: Attendance, label: string): HTMLButtonElement =>
      actionButton(status, label, () => api.bookings.markAttendance({ name: bookingName, attendance }), { class: "secondary small", "aria-label": `${label}: ${who}` });
    body.replaceWith(
      h(
        "table",
        { class: "guests" },
        h("caption", { class: "visually-hidden" }, "Guests, their ratings and how reliably they come"),
        h(
          "thead",
          {},
          h("tr", {}, h("th", { scope: "col" }, "Guest"), h("th", { scope: "col" }, "Seats"), h("th", { scope: "col" }, "Rating as a guest"), h("th", { scope: "col" }, "Came to booked events"), held ? h("th", { scope: "col" }, "Attendance") : null),
        ),
        h(
          "tbody",
          {},
          guests.map((g) => {
            const who = g.displayName || userId(g.user);
            return h(
              "tr",
              {},
              h("td", {}, who),
              h("td", {}, g.seats),
              h("td", {}, formatRating(g.guestRating)),
              h("td", { "data-testid": "reliability" }, formatReliability(g.guestReliability)),
              held ? h("td", {}, h("div", { class: "actions" }, mark(g.booking, who, Attendance.ATTENDED, "Attended"), mark(g.booking, who, Attendance.NO_SHOW, "No-show"))) : null,
            );
          }),
        ),
      ),
      status,
    );
    if (e.state === Event_State.COMPLETED) {
      section.append(
        h("h2", {}, "Your reviews"),
        reviewForm(e, Review_SubjectType.EVENT, "", "Rate the event"),
        ...guests.map((g) => reviewForm(e, Review_SubjectType.GUEST, g.user, `Rate ${g.displayName || userId(g.user)} as a guest`)),
      );
    }
  } catch (err) {
    body.replaceWith(errorBox(err));
  }
}

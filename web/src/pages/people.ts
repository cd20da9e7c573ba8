/** Host profiles (rating, held events with their averages), my bookings, and sign-in. */
import { Booking_State, Event_State, timestampDate, timestampNow, type Event } from "@cowatch/client";
import { api, currentUser, devToken, devUsers, eventId, signIn, type DevUser } from "../session";
import { errorBox, field, focus, formatRating, formatTime, h, input, loading } from "../ui";
import { link, navigate } from "../router";
import { eventCard } from "./discover";

export function hostPage(root: HTMLElement, id: string): void {
  const heading = h("h1", {}, "Host");
  const body = loading();
  root.append(heading, body);
  void (async () => {
    try {
      const profile = await api.reviews.getHostProfile({ name: `users/${id}/hostProfile` });
      heading.textContent = profile.displayName || id;
      const held = h("ul", { class: "held" });
      for await (const ev of api.listHeldEvents({ parent: profile.name })) {
        held.append(
          h("li", {}, link(`/events/${eventId(ev.event)}`, ev.title), ` — ${ev.filmTitle}, ${formatTime(ev.startTime ? timestampDate(ev.startTime) : undefined)} · `, h("span", { class: "rating" }, formatRating(ev.rating))),
        );
      }
      const upcoming: Event[] = [];
      for await (const e of api.listEvents({ host: `users/${id}`, pageSize: 20, startTimeFrom: timestampNow() })) {
        if (e.state !== Event_State.SCHEDULED) continue;
        upcoming.push(e);
        if (upcoming.length >= 20) break;
      }
      body.replaceWith(
        h("p", { class: "rating", "data-testid": "host-profile-rating" }, `As a host: ${formatRating(profile.hostRating)}`),
        h("p", {}, `${profile.heldEventCount} ${profile.heldEventCount === 1 ? "event" : "events"} held`),
        h("h2", {}, "Held events"),
        held.children.length ? held : h("p", { class: "empty" }, "No held events yet."),
        h("h2", {}, "Upcoming events"),
        upcoming.length ? h("ul", { class: "cards" }, upcoming.map(eventCard)) : h("p", { class: "empty" }, "Nothing planned right now."),
      );
      focus(heading);
    } catch (err) {
      body.replaceWith(errorBox(err));
    }
  })();
}

export function bookingsPage(root: HTMLElement): void {
  const heading = h("h1", {}, "My bookings");
  root.append(heading);
  if (!currentUser()) {
    root.append(h("p", {}, link("/signin?next=/bookings", "Sign in"), " to see your bookings."));
    return;
  }
  const body = loading();
  root.append(calendarFeed(), body);
  void (async () => {
    try {
      const rows: HTMLElement[] = [];
      for await (const b of api.listBookings({})) {
        rows.push(
          h(
            "li",
            { class: "card" },
            h("h3", {}, link(`/events/${eventId(b.event)}`, b.eventTitle || b.event)),
            h("p", {}, formatTime(b.eventStartTime ? timestampDate(b.eventStartTime) : undefined)),
            h("p", {}, `${b.seats} ${b.seats === 1 ? "seat" : "seats"} · `, b.state === Booking_State.CONFIRMED ? "confirmed" : "cancelled"),
          ),
        );
      }
      body.replaceWith(rows.length ? h("ul", { class: "cards" }, rows) : h("p", { class: "empty" }, "No bookings yet. ", link("/", "Find an event")));
      focus(heading);
    } catch (err) {
      body.replaceWith(errorBox(err));
    }
  })();
}

/** "Calendar feed": makes a new feed link (the old one stops working) and shows it once. */
function calendarFeed(): HTMLElement {
  const status = h("div", { "aria-live": "polite" });
  const button = h("button", { type: "button", class: "secondary" }, "Calendar feed");
  const box = h(
    "section",
    { class: "calendar-feed", "aria-labelledby": "feed-h" },
    h("h2", { id: "feed-h" }, "Calendar feed"),
    h("p", {}, "Subscribe to your bookings in your calendar app. Making a link turns off any link made before; it is shown only once."),
    button,
    status,
  );
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const res = await api.events.rotateCalendarToken({});
      const url = input({ readonly: true, value: res.feedUrl, "data-testid": "feed-url" });
      status.replaceChildren(field("feed_url", "Your feed link (copy it now)", url));
      url.focus();
      url.select();
    } catch (err) {
      status.replaceChildren(errorBox(err));
    } finally {
      button.disabled = false;
    }
  });
  return box;
}

export function signInPage(root: HTMLElement, next: string): void {
  const heading = h("h1", {}, "Sign in");
  root.append(heading);
  const done = (token: string) => {
    signIn(token);
    navigate(next || "/");
  };
  const dev = h("section", { class: "dev-only", "aria-labelledby": "dev-h", hidden: true });
  root.append(dev);
  void devUsers().then((users) => {
    if (!users) return;
    const status = h("div", { "aria-live": "polite" });
    const pick = (user: DevUser | null, label: string) => {
      const b = h("button", { type: "button" }, label);
      b.addEventListener("click", async () => {
        try {
          done(await devToken(user));
        } catch (err) {
          status.replaceChildren(errorBox(err));
        }
      });
      return b;
    };
    dev.append(
      h("h2", { id: "dev-h" }, "Development only"),
      h("p", {}, "make run offers these users; their tokens are signed with the dev secret and work only against this local stack."),
      h("div", { class: "actions" }, ...users.map((u) => pick(u, `${u.name} (${u.role})`)), pick(null, "New user")),
      status,
    );
    dev.hidden = false;
  });
  const token = input({ autocomplete: "off" });
  const form = h(
    "form",
    {},
    field("token", "Bearer token from your company's sign-in", token),
    h("button", { type: "submit" }, "Sign in with this token"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (token.value.trim()) done(token.value);
  });
  root.append(form);
  focus(heading);
}

/** Host an event (CreateEvent) or edit one (UpdateEvent with a field mask of what changed, and the etag). */
import {
  Code,
  CowatchError,
  Event_Visibility,
  timestampDate,
  timestampFromDate,
  type Event,
} from "@cowatch/client";
import { api, currentUser, eventId } from "../session";
import { errorBox, field, focus, h, input, loading, showFieldErrors } from "../ui";
import { navigate } from "../router";

interface Values {
  filmId: string;
  filmTitle: string;
  title: string;
  description: string;
  start: string; // datetime-local, in the browser's time zone
  timeZone: string;
  durationMin: number;
  placeName: string;
  address: string;
  city: string;
  capacity: number;
  visibility: Event_Visibility;
}

const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

function toLocalInput(date: Date): string {
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function valuesOf(e: Event): Values {
  return {
    filmId: e.film?.id ?? "",
    filmTitle: e.film?.title ?? "",
    title: e.title,
    description: e.description,
    start: e.startTime ? toLocalInput(timestampDate(e.startTime)) : "",
    timeZone: e.timeZone,
    durationMin: Number(e.duration?.seconds ?? 0n) / 60,
    placeName: e.place?.name ?? "",
    address: e.place?.address ?? "",
    city: e.place?.city ?? "",
    capacity: e.capacity,
    visibility: e.visibility,
  };
}

function toEvent(v: Values) {
  const start = v.start ? new Date(v.start) : undefined;
  return {
    film: { id: v.filmId, title: v.filmTitle },
    title: v.title,
    description: v.description,
    startTime: start && !Number.isNaN(start.getTime()) ? timestampFromDate(start) : undefined,
    timeZone: v.timeZone,
    duration: { seconds: BigInt(Math.round(v.durationMin * 60)) },
    place: { name: v.placeName, address: v.address, city: v.city },
    capacity: v.capacity,
    visibility: v.visibility,
  };
}

/** Field-mask paths (snake_case, as in the protos) of what differs between `before` and `after`. */
function changedPaths(before: Values, after: Values): string[] {
  const paths: string[] = [];
  if (before.filmId !== after.filmId || before.filmTitle !== after.filmTitle) paths.push("film");
  if (before.title !== after.title) paths.push("title");
  if (before.description !== after.description) paths.push("description");
  if (before.start !== after.start) paths.push("start_time");
  if (before.timeZone !== after.timeZone) paths.push("time_zone");
  if (before.durationMin !== after.durationMin) paths.push("duration");
  if (before.placeName !== after.placeName || before.address !== after.address || before.city !== after.city)
    paths.push("place");
  if (before.capacity !== after.capacity) paths.push("capacity");
  if (before.visibility !== after.visibility) paths.push("visibility");
  return paths;
}

export function eventFormPage(root: HTMLElement, id: string | null): void {
  const heading = h("h1", {}, id ? "Edit event" : "Host an event");
  root.append(heading);
  if (!currentUser()) {
    root.append(h("p", {}, "Please ", h("a", { href: `/signin?next=${encodeURIComponent(location.pathname)}` }, "sign in"), " to host an event."));
    return;
  }
  if (!id) {
    const start = new Date(Date.now() + 7 * 86_400_000);
    start.setHours(19, 0, 0, 0);
    render(root, {
      filmId: "", filmTitle: "", title: "", description: "", start: toLocalInput(start), timeZone: browserZone,
      durationMin: 120, placeName: "", address: "", city: "", capacity: 6, visibility: Event_Visibility.PUBLIC,
    }, null);
    focus(heading);
    return;
  }
  const wait = loading();
  root.append(wait);
  api.events
    .getEvent({ name: `events/${id}` })
    .then((e) => {
      wait.remove();
      render(root, valuesOf(e), e);
      focus(heading);
    })
    .catch((err) => wait.replaceWith(errorBox(err)));
}

function render(root: HTMLElement, initial: Values, existing: Event | null): void {
  const c = {
    filmId: input({ value: initial.filmId, required: true, placeholder: "e.g. tt0069293" }),
    filmTitle: input({ value: initial.filmTitle, required: true }),
    title: input({ value: initial.title, required: true, maxlength: 200 }),
    description: h("textarea", { rows: 3, maxlength: 5000 }, initial.description),
    start: input({ type: "datetime-local", value: initial.start, required: true }),
    timeZone: input({ value: initial.timeZone, required: true }),
    duration: input({ type: "number", value: initial.durationMin, min: 1, max: 1440, required: true }),
    placeName: input({ value: initial.placeName, required: true }),
    address: input({ value: initial.address, required: true }),
    city: input({ value: initial.city, required: true }),
    capacity: input({ type: "number", value: initial.capacity, min: 1, max: 1000, required: true }),
    visibility: h(
      "select",
      {},
      h("option", { value: String(Event_Visibility.PUBLIC), selected: initial.visibility === Event_Visibility.PUBLIC }, "Public: listed in Discover"),
      h("option", { value: String(Event_Visibility.PRIVATE), selected: initial.visibility === Event_Visibility.PRIVATE }, "Private: invite link only"),
    ),
  };
  const read = (): Values => ({
    filmId: c.filmId.value.trim(),
    filmTitle: c.filmTitle.value.trim(),
    title: c.title.value.trim(),
    description: c.description.value,
    start: c.start.value,
    timeZone: c.timeZone.value.trim(),
    durationMin: Number(c.duration.value),
    placeName: c.placeName.value.trim(),
    address: c.address.value.trim(),
    city: c.city.value.trim(),
    capacity: Number(c.capacity.value),
    visibility: Number(c.visibility.value) as Event_Visibility,
  });
  const status = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, existing ? "Save changes" : "Create event");
  const form = h(
    "form",
    { class: "event-form", novalidate: true },
    h("fieldset", {}, h("legend", {}, "Film"), field("event.film.id", "Film id", c.filmId), field("event.film.title", "Film title", c.filmTitle)),
    field("event.title", "Title", c.title),
    field("event.description", "Description", c.description),
    h(
      "fieldset",
      {},
      h("legend", {}, "When"),
      field("event.start_time", "Start (your local time)", c.start),
      field("event.time_zone", "Time zone of the place", c.timeZone, "IANA name, e.g. Europe/Berlin"),
      field("event.duration", "Duration (minutes)", c.duration),
    ),
    h(
      "fieldset",
      {},
      h("legend", {}, "Where"),
      field("event.place.name", "Place name", c.placeName),
      field("event.place.address", "Address", c.address, "Shown to guests only once they have booked"),
      field("event.place.city", "City", c.city),
    ),
    field("event.capacity", "Seats", c.capacity),
    field("event.visibility", "Visibility", c.visibility),
    status,
    submit,
  );
  if (existing) c.visibility.disabled = true; // visibility is fixed once created
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void save();
  });

  async function save(): Promise<void> {
    submit.disabled = true;
    status.replaceChildren(loading("Saving…"));
    const values = read();
    try {
      let saved: Event;
      if (existing) {
        const paths = changedPaths(initial, values);
        if (paths.length === 0) {
          navigate(`/events/${eventId(existing.name)}`);
          return;
        }
        saved = await api.events.updateEvent({
          event: { ...toEvent(values), name: existing.name, etag: existing.etag },
          updateMask: { paths },
        });
      } else {
        saved = await api.events.createEvent({ event: toEvent(values) });
      }
      navigate(`/events/${eventId(saved.name)}`);
    } catch (err) {
      showFieldErrors(form, err);
      const box = errorBox(err);
      status.replaceChildren(box);
      if (err instanceof CowatchError && (err.reason === "ETAG_MISMATCH" || err.code === Code.Aborted)) {
        box.append(" ", h("button", { type: "button", onclick: () => navigate(location.pathname, true) }, "Reload the event"));
      }
      if (!form.querySelector("[aria-invalid]")) focus(box);
    } finally {
      submit.disabled = false;
    }
  }
  root.append(form);
}

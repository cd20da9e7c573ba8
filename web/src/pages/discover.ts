/** Discover: the public events, filtered and paginated (ListEvents). */
import { timestampDate, timestampFromDate, type Event } from "@cowatch/client";
import { api } from "../session";
import { errorBox, field, formatRating, formatTime, h, input, loading } from "../ui";
import { link, navigate } from "../router";

const PAGE_SIZE = 10;

/** One event in a list: title, film, time, city, seats. */
export function eventCard(e: Event): HTMLElement {
  const soldOut = e.seatsAvailable <= 0;
  return h(
    "li",
    { class: "card" },
    h("h3", {}, link(`/events/${e.name.replace(/^events\//, "")}`, e.title)),
    h("p", { class: "film" }, `Film: ${e.film?.title ?? ""}`),
    h("p", {}, formatTime(e.startTime ? timestampDate(e.startTime) : undefined, e.timeZone), " · ", e.place?.city ?? ""),
    h(
      "p",
      {},
      soldOut ? h("strong", { class: "badge sold-out" }, "Sold out") : `${e.seatsAvailable} of ${e.capacity} seats left`,
      " · host ",
      e.hostDisplayName || e.host,
      " ",
      h("span", { class: "rating" }, formatRating(e.hostRating)),
    ),
  );
}

export function discoverPage(root: HTMLElement, params: URLSearchParams): HTMLElement {
  const q = (k: string) => params.get(k) ?? "";
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter events" });
  const fields = {
    query: input({ type: "search", value: q("query"), placeholder: "title or film" }),
    film: input({ value: q("film"), placeholder: "tt0069293" }),
    city: input({ value: q("city") }),
    from: input({ type: "date", value: q("from") }),
    to: input({ type: "date", value: q("to") }),
    host: input({ value: q("host"), placeholder: "user id" }),
    free: input({ type: "checkbox", checked: q("free") === "1" }),
  };
  form.append(
    field("query", "Text", fields.query),
    field("film_id", "Film id", fields.film),
    field("city", "City", fields.city),
    field("start_time_from", "From", fields.from),
    field("start_time_to", "To", fields.to),
    field("host", "Host", fields.host),
    h("div", { class: "field check" }, fields.free, h("label", { for: "f-free" }, "Only with free seats")),
    h("button", { type: "submit" }, "Search"),
  );
  fields.free.id = "f-free";
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams();
    const set = (k: string, v: string) => v && next.set(k, v);
    set("query", fields.query.value.trim());
    set("film", fields.film.value.trim());
    set("city", fields.city.value.trim());
    set("from", fields.from.value);
    set("to", fields.to.value);
    set("host", fields.host.value.trim());
    if (fields.free.checked) next.set("free", "1");
    navigate(`/?${next}`);
  });

  const list = h("ul", { class: "cards", "aria-live": "polite" });
  const status = h("div");
  const more = h("button", { type: "button", hidden: true }, "More events");
  let pageToken = "";

  async function loadPage(): Promise<void> {
    status.replaceChildren(loading("Loading events…"));
    more.hidden = true;
    try {
      const res = await api.events.listEvents({
        pageSize: PAGE_SIZE,
        pageToken,
        query: q("query"),
        filmId: q("film"),
        city: q("city"),
        host: q("host") ? `users/${q("host")}` : "",
        hasFreeSeats: q("free") === "1",
        startTimeFrom: q("from") ? timestampFromDate(new Date(`${q("from")}T00:00:00`)) : undefined,
        startTimeTo: q("to") ? timestampFromDate(new Date(`${q("to")}T23:59:59`)) : undefined,
      });
      list.append(...res.events.map(eventCard));
      status.replaceChildren();
      if (list.children.length === 0) status.append(h("p", { class: "empty" }, "No events match these filters yet."));
      pageToken = res.nextPageToken;
      more.hidden = !pageToken;
    } catch (err) {
      status.replaceChildren(errorBox(err));
    }
  }
  more.addEventListener("click", () => void loadPage());
  void loadPage();
  root.append(h("h1", {}, "Discover co-watching events"), form, list, status, more);
  return root;
}

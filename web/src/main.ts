/** The cowatch page: routes → pages. Everything it shows comes through @cowatch/client (gRPC-web). */
import "./style.css";
import { currentUser, onSessionChange, signOut } from "./session";
import { h } from "./ui";
import { link, navigate, startRouter } from "./router";
import { discoverPage } from "./pages/discover";
import { eventPage } from "./pages/event";
import { eventFormPage } from "./pages/eventForm";
import { bookingsPage, hostPage, signInPage } from "./pages/people";

const header = document.getElementById("header")!;
const main = document.getElementById("main")!;

function renderHeader(): void {
  const me = currentUser();
  header.replaceChildren(
    h(
      "nav",
      { "aria-label": "Main" },
      link("/", "cowatch", { class: "brand" }),
      link("/", "Discover"),
      link("/new", "Host an event"),
      me ? link("/bookings", "My bookings") : null,
      me ? link(`/hosts/${me.id}`, "My host profile") : null,
      h(
        "span",
        { class: "who" },
        me
          ? [h("span", { "data-testid": "signed-in-as" }, `Signed in as ${me.name}`), " ", h("button", { type: "button", class: "link", onclick: () => { signOut(); navigate("/"); } }, "Sign out")]
          : link(`/signin?next=${encodeURIComponent(location.pathname + location.search)}`, "Sign in"),
      ),
    ),
  );
}

function render(): void {
  renderHeader();
  main.replaceChildren();
  const path = location.pathname;
  const params = new URLSearchParams(location.search);
  let m: RegExpMatchArray | null;
  if (path === "/" || path === "/index.html") discoverPage(main, params);
  else if ((m = path.match(/^\/events\/([^/]+)\/edit$/))) eventFormPage(main, decodeURIComponent(m[1]));
  else if ((m = path.match(/^\/events\/([^/]+)\/?$/))) eventPage(main, decodeURIComponent(m[1]), params.get("invite") ?? "");
  else if (path === "/new") eventFormPage(main, null);
  else if ((m = path.match(/^\/hosts\/([^/]+)$/))) hostPage(main, decodeURIComponent(m[1]));
  else if (path === "/bookings") bookingsPage(main);
  else if (path === "/signin") signInPage(main, params.get("next") ?? "/");
  else main.append(h("h1", {}, "Page not found"), h("p", {}, link("/", "Discover events")));
  document.title = `${main.querySelector("h1")?.textContent ?? "cowatch"} · cowatch`;
}

onSessionChange(renderHeader);
startRouter(render);

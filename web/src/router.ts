/** History-API routing: same-origin links navigate without a reload; `render` draws the page for a path. */
import { h } from "./ui";

let renderFn: () => void = () => {};

export function startRouter(render: () => void): void {
  renderFn = render;
  window.addEventListener("popstate", render);
  document.addEventListener("click", (ev) => {
    const a = (ev.target as Element).closest?.("a");
    if (!a || a.target || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
    const url = new URL(a.href, window.location.href);
    if (url.origin !== window.location.origin || a.hasAttribute("download")) return;
    ev.preventDefault();
    navigate(url.pathname + url.search);
  });
  render();
}

export function navigate(path: string, replace = false): void {
  if (replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  renderFn();
  window.scrollTo(0, 0);
}

export const rerender = (): void => renderFn();

export const link = (href: string, text: string, attrs: Record<string, string> = {}): HTMLAnchorElement =>
  h("a", { href, ...attrs }, text);

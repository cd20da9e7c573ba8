/** Who is signed in (a bearer token kept in this browser until sign-out) and the one cowatch client the page uses. */
import { createCowatchClient, type CowatchClient } from "@cowatch/client";

const KEY = "cowatch.token";

/** The API origin: the page's own (make run, NGINX), or Envoy on :8080 under the Vite dev server. */
export const apiBase: string = import.meta.env.VITE_COWATCH_API ?? (import.meta.env.DEV ? "http://localhost:8080" : window.location.origin);

export interface User {
  /** The JWT `sub`: the user id (`users/{id}` in resource names). */
  readonly id: string;
  readonly name: string;
}

let token: string | null = localStorage.getItem(KEY);
const listeners = new Set<() => void>();

/** The signed-in user, read from the token's claims (display only: the server checks the token). */
export function currentUser(): User | null {
  if (!token) return null;
  try {
    const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))) as Record<string, unknown>;
    const id = String(payload.sub ?? "");
    const name = String(payload.name ?? payload.preferred_username ?? id);
    return id ? { id, name } : null;
  } catch {
    return null;
  }
}

export function signIn(newToken: string): void {
  token = newToken.trim() || null;
  if (token) localStorage.setItem(KEY, token);
  else localStorage.removeItem(KEY);
  for (const fn of listeners) fn();
}

export const signOut = (): void => signIn("");

export function onSessionChange(fn: () => void): void {
  listeners.add(fn);
}

export const api: CowatchClient = createCowatchClient({ baseUrl: apiBase, token: () => token });

/** `users/{id}` → `id`. */
export const userId = (name: string): string => name.replace(/^users\//, "");
/** `events/{id}` → `id`. */
export const eventId = (name: string): string => name.replace(/^events\//, "");

/** A dev user offered by `make run` (never present in production). */
export interface DevUser {
  readonly id: string;
  readonly name: string;
  readonly role: string;
}

/** The dev users `make run` offers, or null when the page is not served by `make run`. */
export async function devUsers(): Promise<DevUser[] | null> {
  try {
    const res = await fetch(new URL("/dev/users", apiBase), { headers: { accept: "application/json" } });
    if (!res.ok || !(res.headers.get("content-type") ?? "").includes("json")) return null;
    return ((await res.json()) as { users: DevUser[] }).users;
  } catch {
    return null;
  }
}

/** A dev token for `user` (or a brand-new user when `user` is null), minted by `make run`. */
export async function devToken(user: DevUser | null): Promise<string> {
  const res = await fetch(new URL("/dev/token", apiBase), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(user ? { sub: user.id, name: user.name } : { new: true }),
  });
  if (!res.ok) throw new Error(`dev token: HTTP ${res.status}`);
  return ((await res.json()) as { token: string }).token;
}

// The socket the store talks through: just the part of the browser's WebSocket it uses, so tests
// can inject a fake, and where the bridge's endpoint is.

/** The readyState of an open WebSocket. */
export const OPEN = 1;

/** The subset of the browser's `WebSocket` the store needs (a real WebSocket is one). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: Event) => void) | null;
  onmessage: ((event: MessageEvent) => void) | null;
  onclose: ((event: CloseEvent) => void) | null;
  onerror: ((event: Event) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** Opens a socket to a URL; may throw (a bad URL), which the store treats as a failed attempt. */
export type SocketFactory = (url: string) => WebSocketLike;

/** The browser's own WebSocket. */
export const browserSocket: SocketFactory = (url) => new WebSocket(url);

/**
 * The bridge's WebSocket endpoint for a page: path `/ws` on the same host, ws: or wss: to match.
 * A `token` query parameter of the page (the bridge's optional browser auth, `?token=…`) goes
 * along as `/ws?token=…`: browsers cannot set headers on a WebSocket handshake. Nothing else of
 * the page's query or fragment does.
 */
export function bridgeUrl(pageHref: string): string {
  const page = new URL(pageHref);
  const url = new URL("/ws", page);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const token = page.searchParams.get("token");
  if (token !== null && token !== "") url.searchParams.set("token", token);
  return url.toString();
}

// Request ids: unique per page, 1 to 128 characters as the schema asks.

let counter = 0;

/**
 * A fresh request id. Uses `crypto.getRandomValues`, which (unlike `crypto.randomUUID`) also
 * works on plain-http pages that are not a secure context, e.g. `http://192.168.1.5:8080`.
 */
export function newRequestId(): string {
  counter += 1;
  const bytes = new Uint8Array(8);
  globalThis.crypto.getRandomValues(bytes);
  const random = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `r${counter.toString(36)}-${random}`;
}

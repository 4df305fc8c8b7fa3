import { describe, expect, it } from "vitest";

import { bridgeUrl } from "./socket.ts";

describe("bridgeUrl", () => {
  it("is /ws on the page's host, ws: for http: and wss: for https:", () => {
    expect(bridgeUrl("http://127.0.0.1:8080/")).toBe("ws://127.0.0.1:8080/ws");
    expect(bridgeUrl("https://chat.example.com/some/page?x=1#y")).toBe("wss://chat.example.com/ws");
    expect(bridgeUrl("http://[::1]:5173/index.html")).toBe("ws://[::1]:5173/ws");
  });

  it("carries the page's token query parameter over to the socket, and nothing else", () => {
    expect(bridgeUrl("http://127.0.0.1:8080/?token=s3cret")).toBe(
      "ws://127.0.0.1:8080/ws?token=s3cret",
    );
    expect(bridgeUrl("https://chat.example.com/a/b?x=1&token=abc&y=2#token=no")).toBe(
      "wss://chat.example.com/ws?token=abc",
    );
  });

  it("keeps the token exact, encoding what a query needs encoded", () => {
    const token = "a+b/c=d&e f%é";
    const url = new URL(bridgeUrl(`http://h:1/?token=${encodeURIComponent(token)}`));
    expect(url.pathname).toBe("/ws");
    expect(url.searchParams.get("token")).toBe(token);
    expect([...url.searchParams.keys()]).toEqual(["token"]);
  });

  it("uses the first token when the page has several, and none when it is empty", () => {
    expect(bridgeUrl("http://h:1/?token=one&token=two")).toBe("ws://h:1/ws?token=one");
    expect(bridgeUrl("http://h:1/?token=")).toBe("ws://h:1/ws");
    expect(bridgeUrl("http://h:1/?tokens=x&Token=y")).toBe("ws://h:1/ws");
  });
});

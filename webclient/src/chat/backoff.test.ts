import { describe, expect, it } from "vitest";

import { backoffDelay, DEFAULT_BACKOFF } from "./backoff.ts";

describe("backoffDelay", () => {
  it("doubles from the initial delay up to the cap", () => {
    const delays = [0, 1, 2, 3, 4, 5, 6].map((n) => backoffDelay(n, DEFAULT_BACKOFF, () => 0));
    expect(delays).toEqual([500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
  });

  it("takes up to the jitter fraction off at random", () => {
    expect(backoffDelay(1, DEFAULT_BACKOFF, () => 0.999)).toBe(700);
    expect(backoffDelay(1, { ...DEFAULT_BACKOFF, jitter: 0 }, () => 0.5)).toBe(1000);
  });
});

import { describe, expect, it } from "vitest";

import { heldPosition, lastPosition, placement } from "./positions.ts";

describe("placement", () => {
  it("applies an event that starts at the position expected next", () => {
    expect(placement(4, 4, 4)).toBe("next");
    expect(placement(4, 4, 6)).toBe("next");
  });

  it("drops an event that ends at or below the last position held", () => {
    expect(placement(4, 3, 3)).toBe("held");
    expect(placement(4, 1, 3)).toBe("held");
    expect(placement(1, 0, 0)).toBe("held"); // ai:start again
  });

  it("tells a partly held event and a gap apart", () => {
    expect(placement(4, 2, 5)).toBe("overlap");
    expect(placement(4, 5, 5)).toBe("gap");
  });
});

describe("lastPosition", () => {
  it("covers seq … seq + count − 1, count 0 meaning 1", () => {
    expect(lastPosition(1, 1)).toBe(1);
    expect(lastPosition(4, 3)).toBe(6);
    expect(lastPosition(4, 0)).toBe(4);
  });
});

describe("heldPosition", () => {
  it("is the position before the one expected next (−1: nothing held)", () => {
    expect(heldPosition(7)).toBe(6);
    expect(heldPosition(0)).toBe(-1);
  });
});

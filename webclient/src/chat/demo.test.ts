import { describe, expect, it } from "vitest";

import { demoToolResult, modeOptions } from "./demo.ts";

describe("the composer's modes", () => {
  it("sends nothing extra in chat, the demo tool in tools, a schema in json", () => {
    expect(modeOptions("chat")).toEqual({});
    expect(modeOptions("tools").tools?.map((tool) => tool.name)).toEqual(["get_weather"]);
    expect(modeOptions("json").responseFormat).toMatchObject({
      type: "json_schema",
      schema: { type: "object", required: ["title", "summary", "tags", "confidence"] },
    });
  });

  it("makes up a weather report for the demo tool only, whatever its arguments", () => {
    expect(
      JSON.parse(demoToolResult("get_weather", '{"city":"Oslo","unit":"fahrenheit"}')),
    ).toEqual({ city: "Oslo", temperature: 64, unit: "fahrenheit", conditions: "partly cloudy" });
    expect(JSON.parse(demoToolResult("get_weather", "{not json"))).toMatchObject({
      city: "the city",
      unit: "celsius",
    });
    expect(demoToolResult("send_email", "{}")).toBe("");
  });
});

// Positions in a generation (docs/protocol.md, "Resume: durable streams"). Pure.
//
// Every event of a resumable generation has a position: ai:start 0, the parts from 1 (a part of
// `count` units covers seq … seq + count − 1, an ai:tool_call one), the terminal event the next
// one. A generation that is not resumable numbers its parts from 0 and nothing else. The page
// holds everything up to `nextSeq − 1`; a resume asks for what comes after that.
//
// Defensive: an event that ends at or below what the page holds was applied already and is
// dropped — text is never appended twice, whatever the wire does.

/** Where an event falls against what the page holds (`nextSeq`: the position expected next). */
export type Placement =
  /** It starts right at `nextSeq`: apply it. */
  | "next"
  /** It ends at or below `nextSeq − 1`: held already, drop it. */
  | "held"
  /** It starts below `nextSeq` but ends past it: part held, part new (the wire is wrong). */
  | "overlap"
  /** It starts past `nextSeq`: something is missing (the wire is wrong). */
  | "gap";

/** Where the event covering `first … last` falls, given the position expected next. */
export function placement(nextSeq: number, first: number, last: number): Placement {
  if (last < nextSeq) return "held";
  if (first < nextSeq) return "overlap";
  if (first > nextSeq) return "gap";
  return "next";
}

/** The last position a part covers: `count` 0 (older servers) means 1; a tool call covers one. */
export function lastPosition(seq: number, count: number): number {
  return seq + Math.max(1, count) - 1;
}

/** The `afterSeq` of a resume: the last position the page holds (−1: none). */
export function heldPosition(nextSeq: number): number {
  return nextSeq - 1;
}

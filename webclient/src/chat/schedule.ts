// When the store publishes a new snapshot: at most once per animation frame.

/** Runs a callback once, soon; returns a function that cancels it. */
export type FrameScheduler = (callback: () => void) => () => void;

/**
 * The next animation frame. Browsers pause animation frames in hidden tabs, so a timer flushes
 * too (after `fallbackMs`) to keep the state current there; whichever fires first wins. Without
 * `requestAnimationFrame` (tests, workers) a ~60 Hz timer stands in.
 */
export function animationFrame(fallbackMs = 100): FrameScheduler {
  return (callback) => {
    if (typeof requestAnimationFrame !== "function") {
      const timer = setTimeout(callback, 16);
      return () => clearTimeout(timer);
    }
    let done = false;
    const run = (): void => {
      if (done) return;
      done = true;
      cancelAnimationFrame(frame);
      clearTimeout(timer);
      callback();
    };
    const frame = requestAnimationFrame(run);
    const timer = setTimeout(run, fallbackMs);
    return () => {
      done = true;
      cancelAnimationFrame(frame);
      clearTimeout(timer);
    };
  };
}

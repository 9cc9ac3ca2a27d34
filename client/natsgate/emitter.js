// natsgate/emitter.js: typed events and explicit states, shared by the client and its
// subscriptions. No imports.

/**
 * An exception thrown by an application handler must not break frame processing; it is
 * re-thrown from a fresh task so that it still shows up in the console (or fails a test).
 * @param {unknown} err
 */
export function rethrowLater(err) {
  setTimeout(() => {
    throw err;
  }, 0);
}

/**
 * A small typed event emitter; handlers run in subscription order.
 * @template {Record<string, unknown[]>} M
 */
export class Emitter {
  /** @type {{[K in keyof M]?: Set<(...args: M[K]) => void>}} */
  #handlers = {};

  /**
   * @template {keyof M} K
   * @param {K} name
   * @param {(...args: M[K]) => void} handler
   * @returns {() => void} removes the handler
   */
  on(name, handler) {
    /** @type {Set<(...args: M[K]) => void>} */
    const set = this.#handlers[name] ?? new Set();
    this.#handlers[name] = set;
    set.add(handler);
    return () => this.off(name, handler);
  }

  /**
   * @template {keyof M} K
   * @param {K} name
   * @param {(...args: M[K]) => void} handler
   */
  off(name, handler) {
    this.#handlers[name]?.delete(handler);
  }

  /**
   * @template {keyof M} K
   * @param {K} name
   * @param {M[K]} args
   */
  emit(name, ...args) {
    for (const handler of [...(this.#handlers[name] ?? [])]) {
      try {
        handler(...args);
      } catch (err) {
        rethrowLater(err);
      }
    }
  }
}

/**
 * A state held as one of a few names, with the table of legal moves (centrifuge-js, h11):
 * each move is checked against the table and announced. An illegal move is a bug in this
 * library, and throws.
 * @template {string} S
 */
export class StateMachine {
  /** @type {S} */
  #state;
  /** @type {Readonly<Record<S, readonly S[]>>} */
  #table;
  /** @type {string} */
  #what;
  /** @type {(next: S, previous: S) => void} */
  #onMove;

  /**
   * @param {string} what the owner, named in the error (`client`, `subscription`)
   * @param {S} initial
   * @param {Readonly<Record<S, readonly S[]>>} table for each state, where it may go next
   * @param {(next: S, previous: S) => void} onMove called after each move (the owner emits `state`)
   */
  constructor(what, initial, table, onMove) {
    this.#what = what;
    this.#state = initial;
    this.#table = table;
    this.#onMove = onMove;
  }

  /** @returns {S} */
  get state() {
    return this.#state;
  }

  /**
   * Move to `next`; staying where it is is not a move and says nothing.
   * @param {S} next
   */
  go(next) {
    const previous = this.#state;
    if (previous === next) return;
    if (!this.#table[previous].includes(next)) {
      throw new Error(`natsgate: ${this.#what} cannot go from ${previous} to ${next}`);
    }
    this.#state = next;
    this.#onMove(next, previous);
  }
}

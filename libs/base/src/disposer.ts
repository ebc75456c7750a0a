/**
 * Collects clean-up steps and runs them in reverse order, once. Owners of several resources
 * (a VM's process, sockets and files) register each as it is made, so a failure half-way
 * releases exactly what was made.
 */
export class Disposer {
  #steps: Array<() => Promise<void> | void> = [];
  #done = false;

  add(step: () => Promise<void> | void): void {
    if (this.#done) throw new Error('Disposer already ran');
    this.#steps.push(step);
  }

  async dispose(): Promise<Error[]> {
    if (this.#done) return [];
    this.#done = true;
    const errors: Error[] = [];
    for (const step of this.#steps.reverse()) {
      try {
        await step();
      } catch (e) {
        errors.push(e instanceof Error ? e : new Error(String(e)));
      }
    }
    return errors;
  }
}

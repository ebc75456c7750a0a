import { ForkyError } from '@forky/base';

/** QEMU answered a command with an error. */
export class QmpCommandError extends ForkyError {
  override readonly name = 'QmpCommandError';
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super('QEMU', `QMP ${command} failed: ${errorClass}: ${desc}`, { details: { command, errorClass } });
  }
}

/** The socket closed (QEMU exited or the peer hung up) while a call was pending. */
export class QmpClosedError extends ForkyError {
  override readonly name = 'QmpClosedError';
  constructor(what: string, cause?: unknown) {
    super('UNAVAILABLE', `${what}: connection closed`, { cause });
  }
}

/** The peer sent something that is not the protocol; the connection is dropped. */
export class ProtocolError extends ForkyError {
  override readonly name = 'ProtocolError';
  constructor(message: string, cause?: unknown) {
    super('QEMU', message, { cause });
  }
}

/** A guest agent command failed inside the guest. */
export class GuestAgentError extends ForkyError {
  override readonly name = 'GuestAgentError';
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super('QEMU', `guest agent ${command} failed: ${errorClass}: ${desc}`, { details: { command, errorClass } });
  }
}

/**
 * A guest agent reply longer than the client reads (its bytes were discarded as they came). The
 * stream stays in step: the next command is answered as usual.
 */
export class ReplyTooLargeError extends ForkyError {
  override readonly name = 'ReplyTooLargeError';
  constructor(
    readonly command: string,
    readonly limitBytes: number,
    readonly bytes: number,
  ) {
    super('CAPACITY', `guest agent reply to ${command} is ${bytes} bytes, over the ${limitBytes}-byte limit`, {
      details: { command, limitBytes, bytes },
    });
  }
}

/** A command in the guest wrote more output than an exec returns; it ran, its output is lost. */
export class ExecOutputTooLargeError extends ForkyError {
  override readonly name = 'ExecOutputTooLargeError';
  constructor(
    readonly program: string,
    what: string,
    readonly limitBytes: number,
    cause?: unknown,
  ) {
    super(
      'CAPACITY',
      `output of guest command ${JSON.stringify(program.slice(0, 100))} exceeds ${limitBytes} bytes (${what}); write large output to a file in the guest instead`,
      {
        cause,
        details: { limitBytes },
      },
    );
  }
}

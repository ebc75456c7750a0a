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

/**
 * Text the guest made (file names, commands, error messages, a tar's stderr) as one safe run of
 * characters for a terminal: C0 controls, DEL and C1 (U+0080–U+009F) become `\xNN`, a backslash
 * `\\`, so no escape sequence (OSC 52 writes the clipboard) and no forged line gets through.
 * Not for a command's own output bytes, which the user asked for as they are.
 */
export function guestText(s: unknown): string {
  // eslint-disable-next-line no-control-regex
  return String(s).replace(/[\u0000-\u001f\u007f-\u009f\\]/g, (c) =>
    c === '\\' ? '\\\\' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`,
  );
}

/** JSON.stringify, with C1 controls escaped too (it leaves U+0080–U+009F raw, and a terminal obeys them). */
export function safeJson(v: unknown, indent?: number): string {
  const s = JSON.stringify(v, null, indent);
  return s === undefined ? 'null' : s.replace(/[\u0080-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

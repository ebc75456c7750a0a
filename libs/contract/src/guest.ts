import { z } from 'zod';
import { HostId, IdempotencyKey, VmId } from './ids.js';

/**
 * The sandbox endpoints (STREAMS.md): streams (exec, attach, read, write, watch) and one-shot
 * calls inside a VM, through its guest agent. Every field is bounded: the request comes from
 * anyone who may call, and goes on to a guest.
 */

/** A chunk on a stream is at most this many bytes, either way. */
export const STREAM_CHUNK_MAX = 64 << 10;
/** The receive window a client grants when it names none. */
export const DEFAULT_STREAM_WINDOW = 256 << 10;
export const MAX_STREAM_WINDOW = 16 << 20;
/** How often a client must be heard on a stream, and how long a silent one lives. */
export const STREAM_KEEPALIVE_MS = 10_000;
export const STREAM_IDLE_MS = 30_000;

export const STREAM_HEADERS = { seq: 'Forky-Seq', kind: 'Forky-Kind' } as const;
/** Kinds of messages on `out`, from the host (`eof`: a port connection's guest side half-closed). */
export const OUT_KINDS = ['stdout', 'stderr', 'data', 'event', 'credit', 'eof', 'end'] as const;
export type OutKind = (typeof OUT_KINDS)[number];
/** Kinds of messages on `in`, from the client. */
export const IN_KINDS = ['data', 'eof', 'resize'] as const;
export type InKind = (typeof IN_KINDS)[number];

const noNul = (s: string): boolean => !s.includes('\0');

/** An absolute path in the guest: at most 4096 bytes' worth of characters, no NUL. */
export const GuestPath = z
  .string()
  .min(1)
  .max(4096)
  .refine((s) => s.startsWith('/'), 'must be an absolute path')
  .refine(noNul, 'must not contain NUL');

/** cmd, shell, env and cwd of an exec, as JSON: the guest's frame is 64 KiB, the rest of the request fits the difference. */
export const EXEC_REQUEST_MAX = 60 << 10;
const utf8 = new TextEncoder();

const Arg = z.string().max(65536).refine(noNul, 'must not contain NUL');
const EnvName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,255}$/, 'an environment variable name (letters, digits, _)');
export const GuestEnv = z
  .record(EnvName, Arg)
  .refine((e) => Object.keys(e).length <= 256, 'at most 256 entries')
  .default({});
/** A user name or uid, as the agent takes it. */
const GuestUser = z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/, 'a user name or uid');
const Pid = z.number().int().min(1).max(0x7fffffff);
const PtySize = z.strictObject({ rows: z.number().int().min(1).max(1000), cols: z.number().int().min(1).max(1000) });
/** The client's receive window: what hostd may hold for it, at most. */
const Window = z.number().int().min(STREAM_CHUNK_MAX).max(MAX_STREAM_WINDOW).optional();
const Perm = z.number().int().min(0).max(0o7777);

export const ExecStartRequest = z
  .strictObject({
    id: VmId,
    cmd: z.array(Arg).min(1).max(256).optional(),
    /** One command line for `/bin/sh -c`. */
    shell: Arg.min(1).optional(),
    env: GuestEnv,
    cwd: GuestPath.optional(),
    user: GuestUser.optional(),
    stdin: z.boolean().default(false),
    /** 0: no timeout; at most 24 h. */
    timeoutMs: z.number().int().min(0).max(86_400_000).default(0),
    detach: z.boolean().default(false),
    pty: PtySize.optional(),
    window: Window,
    key: IdempotencyKey.optional(),
  })
  .superRefine((r, ctx) => {
    if ((r.cmd === undefined) === (r.shell === undefined))
      ctx.addIssue({ code: 'custom', path: ['cmd'], message: 'give exactly one of cmd (argv) and shell (a command line)' });
    if (r.detach && r.stdin) ctx.addIssue({ code: 'custom', path: ['stdin'], message: 'a detached process has no stdin stream' });
    if (r.detach && r.pty) ctx.addIssue({ code: 'custom', path: ['pty'], message: 'a detached process has no terminal stream' });
    // The guest takes the request in one frame: refused here, naming the field, not by the agent session.
    const size = (v: unknown): number => (v === undefined ? 0 : utf8.encode(JSON.stringify(v)).length);
    const parts = { cmd: size(r.cmd), shell: size(r.shell), env: size(r.env), cwd: size(r.cwd) };
    if (parts.cmd + parts.shell + parts.env + parts.cwd > EXEC_REQUEST_MAX) {
      const field = (Object.keys(parts) as Array<keyof typeof parts>).reduce((a, b) => (parts[b] > parts[a] ? b : a));
      ctx.addIssue({
        code: 'custom',
        path: [field],
        message: `cmd, shell, env and cwd together must fit ${EXEC_REQUEST_MAX >> 10} KiB of JSON (the guest takes the request in one frame)`,
      });
    }
  });
export type ExecStartRequest = z.infer<typeof ExecStartRequest>;

export const ProcAttachRequest = z.strictObject({ id: VmId, pid: Pid, follow: z.boolean().default(true), window: Window });
export type ProcAttachRequest = z.infer<typeof ProcAttachRequest>;

export const FileReadRequest = z.strictObject({
  id: VmId,
  path: GuestPath,
  offset: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
  /** Absent: to the end. */
  length: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
  window: Window,
});
export type FileReadRequest = z.infer<typeof FileReadRequest>;

export const FileWriteRequest = z.strictObject({
  id: VmId,
  path: GuestPath,
  mode: z.enum(['truncate', 'create', 'append']).default('truncate'),
  perm: Perm.optional(),
  parents: z.boolean().default(false),
  window: Window,
  key: IdempotencyKey.optional(),
});
export type FileWriteRequest = z.infer<typeof FileWriteRequest>;

export const FileWatchRequest = z.strictObject({ id: VmId, path: GuestPath, recursive: z.boolean().default(false), window: Window });
export type FileWatchRequest = z.infer<typeof FileWatchRequest>;

/** A TCP connection to a port of the guest's loopback (`forky port`): bytes both ways, `eof` as half-close. */
export const PortOpenRequest = z.strictObject({
  id: VmId,
  port: z.number().int().min(1).max(65535),
  window: Window,
  key: IdempotencyKey.optional(),
});
export type PortOpenRequest = z.infer<typeof PortOpenRequest>;

/** Where a stream's messages go (STREAMS.md); `sid` is 22 characters of [A-Za-z0-9]. */
export const StreamRef = z.strictObject({
  sid: z.string().regex(/^[A-Za-z0-9]{22}$/, '22 letters and digits'),
  host: HostId,
  out: z.string(),
  in: z.string(),
  credit: z.string(),
  cancel: z.string(),
});
export type StreamRef = z.infer<typeof StreamRef>;

/** An open's reply: a stream, and the process's pid once known; a detached exec gets only its pid. */
export const StreamOpenReply = z.strictObject({ stream: StreamRef.optional(), pid: Pid.optional() });
export type StreamOpenReply = z.infer<typeof StreamOpenReply>;

export const GUEST_SIGNALS = ['TERM', 'KILL', 'INT', 'HUP', 'QUIT', 'USR1', 'USR2', 'STOP', 'CONT'] as const;

const GuestStat = z.strictObject({
  type: z.enum(['file', 'dir', 'symlink', 'other']),
  size: z.number(),
  mode: z.number().int(),
  mtimeMs: z.number(),
});
const GuestProc = z.strictObject({
  pid: z.number().int(),
  cmd: z.array(z.string()),
  detached: z.boolean(),
  pty: z.boolean(),
  running: z.boolean(),
  exitCode: z.number().int().nullable(),
  startedAtMs: z.number(),
});

export const ProcListRequest = z.strictObject({ id: VmId });
export const ProcListReply = z.strictObject({ processes: z.array(GuestProc) });
export const ProcSignalRequest = z.strictObject({ id: VmId, pid: Pid, signal: z.enum(GUEST_SIGNALS).default('TERM') });
export const FileListRequest = z.strictObject({ id: VmId, path: GuestPath });
export const FileListReply = z.strictObject({
  entries: z.array(z.strictObject({ name: z.string(), stat: GuestStat })),
  truncated: z.boolean(),
});
export const FileStatRequest = z.strictObject({ id: VmId, path: GuestPath });
export const FileStatReply = z.strictObject({ stat: GuestStat });
export const FileMkdirRequest = z.strictObject({ id: VmId, path: GuestPath, parents: z.boolean().default(false), perm: Perm.optional() });
export const FileRemoveRequest = z.strictObject({ id: VmId, path: GuestPath, recursive: z.boolean().default(false) });
export const FileRenameRequest = z.strictObject({ id: VmId, from: GuestPath, to: GuestPath });
export const GuestOk = z.strictObject({});

/** The endpoints whose reply is a stream. */
export const STREAM_OPEN_ENDPOINTS = ['exec.start', 'proc.attach', 'file.read', 'file.write', 'file.watch', 'port.open'] as const;
export type StreamOpenEndpoint = (typeof STREAM_OPEN_ENDPOINTS)[number];
export const GUEST_UNARY_ENDPOINTS = [
  'proc.list',
  'proc.signal',
  'file.list',
  'file.stat',
  'file.mkdir',
  'file.remove',
  'file.rename',
] as const;
export type GuestUnaryEndpoint = (typeof GUEST_UNARY_ENDPOINTS)[number];
export const GUEST_ENDPOINTS = [...STREAM_OPEN_ENDPOINTS, ...GUEST_UNARY_ENDPOINTS] as const;
export type GuestEndpoint = (typeof GUEST_ENDPOINTS)[number];

export const guestContract = {
  'exec.start': { request: ExecStartRequest, reply: StreamOpenReply },
  'proc.attach': { request: ProcAttachRequest, reply: StreamOpenReply },
  'file.read': { request: FileReadRequest, reply: StreamOpenReply },
  'file.write': { request: FileWriteRequest, reply: StreamOpenReply },
  'file.watch': { request: FileWatchRequest, reply: StreamOpenReply },
  'port.open': { request: PortOpenRequest, reply: StreamOpenReply },
  'proc.list': { request: ProcListRequest, reply: ProcListReply },
  'proc.signal': { request: ProcSignalRequest, reply: GuestOk },
  'file.list': { request: FileListRequest, reply: FileListReply },
  'file.stat': { request: FileStatRequest, reply: FileStatReply },
  'file.mkdir': { request: FileMkdirRequest, reply: GuestOk },
  'file.remove': { request: FileRemoveRequest, reply: GuestOk },
  'file.rename': { request: FileRenameRequest, reply: GuestOk },
} as const satisfies Record<GuestEndpoint, { request: z.ZodType; reply: z.ZodType }>;

/** Out `end` bodies (JSON), as STREAMS.md gives them. */
export const StreamEndBody = z.union([
  z.strictObject({
    ok: z.literal(true),
    exitCode: z.number().int().optional(),
    signal: z.string().nullable().optional(),
    timedOut: z.boolean().optional(),
    cancelled: z.boolean().optional(),
    bytes: z.number().int().optional(),
  }),
  z.strictObject({ ok: z.literal(false), code: z.string().max(64), message: z.string().max(4000) }),
]);
export type StreamEndBody = z.infer<typeof StreamEndBody>;
export const CreditBody = z.strictObject({ bytes: z.number().int().min(0).max(MAX_STREAM_WINDOW) });
export const ResizeBody = PtySize;

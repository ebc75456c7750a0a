import { z } from 'zod';
import { VmId } from './ids.js';
import { SUBJECT_ROOT } from './subjects.js';

/**
 * forky-gateway (README, Previews): serves `http://<vmId>-<port>.<domain>/` to guest ports. Its one
 * NATS endpoint hands out a preview's URL and its per-VM token, to whoever may call it.
 *   forky.v1.gateway.url   {id, port} -> {url, token}
 */
export const GATEWAY_ENDPOINTS = ['gateway.url'] as const;
export type GatewayEndpoint = (typeof GATEWAY_ENDPOINTS)[number];

export const gatewaySubject = (endpoint: GatewayEndpoint): string => `${SUBJECT_ROOT}.${endpoint}`;

export const GatewayUrlRequest = z.strictObject({ id: VmId, port: z.number().int().min(1).max(65535) });
export type GatewayUrlRequest = z.infer<typeof GatewayUrlRequest>;

export const GatewayUrlReply = z.strictObject({
  /** Where a browser opens the preview: the token is not in it (send it as header, cookie or `?forky_token=`). */
  url: z.string().url().max(512),
  /** base64url HMAC-SHA256 of the VM id: valid for every port of that VM. */
  token: z.string().regex(/^[A-Za-z0-9_-]{43}$/),
});
export type GatewayUrlReply = z.infer<typeof GatewayUrlReply>;

export const gatewayContract = {
  'gateway.url': { request: GatewayUrlRequest, reply: GatewayUrlReply },
} as const satisfies Record<GatewayEndpoint, { request: z.ZodType; reply: z.ZodType }>;

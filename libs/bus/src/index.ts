export { connectBus, type BusOptions, type BusAuth } from './connect.js';
export { startService, type EndpointDef, type ServiceDef } from './service.js';
export { request, HostdClient, SchedulerClient, type RequestOptions } from './client.js';
export { openBuckets, createOrOpen, type Buckets } from './buckets.js';
export { startNatsServer, type NatsServer, type NatsServerOptions } from './nats-server.js';

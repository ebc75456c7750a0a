// What other packages use: start a gateway, its config, and how tokens are made.
export { startGateway, GATEWAY_VERSION, type RunningGateway } from './run.js';
export { loadGatewayConfig, GatewayConfig, secretFileOf } from './config.js';
export { previewToken, tokenMatches, loadSecret } from './token.js';
export { routeOf, previewUrl, type Target } from './route.js';

/**
 * The request-level HTTP parts of a `protocol: http` service (issue 5):
 * HTTP/1.1 requests and HTTP/2 streams, balanced one by one over shared
 * upstream pools.
 */
import type { HttpContext, HttpParts } from './http.ts';
import { HttpPlane } from './http-forward.ts';
import { Http1Handler } from './http1.ts';
import { Http2DownstreamHandler } from './http2.ts';

export function requestParts(ctx: HttpContext): Pick<HttpParts, 'http1' | 'http2'> {
  const plane = new HttpPlane(ctx);
  return { http1: new Http1Handler(plane), http2: new Http2DownstreamHandler(plane) };
}

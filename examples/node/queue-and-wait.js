#!/usr/bin/env node
// Queues one task on an aiproc server, waits for its result on
// StreamResults, acknowledges it and prints it as one line of JSON.
//
// The client is built at run time from the contract in ../../protos: no
// generated JavaScript is needed (or committed).
//
// Exit status: 0 when the task succeeded, 1 when it finished without success
// (failed or cancelled), 2 on any error (bad arguments, RPC failure,
// deadline exceeded, stream closed before the result arrived).
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const SERVICE_PROTO = 'aiproc/v1/processor_service.proto';
const CLIENT_ID_KEY = 'aiproc-client-id';
// After the Ack and half-close, how long to wait for the server to close the
// stream before cancelling it from this side.
const CLOSE_GRACE_MS = 5000;

const USAGE =
  'usage: node queue-and-wait.js --server HOST:PORT --url URL --content-file FILE ' +
  '[--client-id ID] [--priority PRIORITY_HIGH] [--timeout SECONDS]';

class UsageError extends Error {}

function parseCommandLine(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        server: { type: 'string' },
        url: { type: 'string' },
        'content-file': { type: 'string' },
        'client-id': { type: 'string' },
        priority: { type: 'string' },
        timeout: { type: 'string', default: '30' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    throw new UsageError(`${err.message}; ${USAGE}`);
  }
  const opts = parsed.values;
  if (opts.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  for (const required of ['server', 'url', 'content-file']) {
    if (!opts[required]) {
      throw new UsageError(`--${required} is required; ${USAGE}`);
    }
  }
  const timeoutSeconds = Number(opts.timeout);
  if (!Number.isFinite(timeoutSeconds) || timeoutSeconds <= 0) {
    throw new UsageError(`--timeout must be a positive number of seconds, got ${opts.timeout}`);
  }
  return {
    server: opts.server,
    url: opts.url,
    contentFile: opts['content-file'],
    clientId: opts['client-id'],
    priority: opts.priority,
    timeoutMs: timeoutSeconds * 1000,
  };
}

function loadPackage() {
  const definition = protoLoader.loadSync(SERVICE_PROTO, {
    includeDirs: [PROTO_ROOT],
    keepCase: false, // camelCase field names, as in the proto3 JSON mapping
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).aiproc.v1;
}

function deadlineIn(ms) {
  return new Date(Date.now() + ms);
}

function describeRpcError(rpc, err) {
  const code = grpc.status[err.code] ?? String(err.code);
  const details = err.details || err.message;
  return `${rpc}: ${code}: ${details}`;
}

function queueTask(client, metadata, spec, timeoutMs) {
  return new Promise((resolve, reject) => {
    client.queueTask({ task: spec }, metadata, { deadline: deadlineIn(timeoutMs) }, (err, reply) => {
      if (err) {
        reject(new Error(describeRpcError('QueueTask', err)));
      } else {
        resolve(reply);
      }
    });
  });
}

// Subscribes to one task, resolves with its TaskResult once the result has
// been acknowledged and the stream closed.
function waitForResult(client, metadata, taskId, timeoutMs) {
  return new Promise((resolve, reject) => {
    const call = client.streamResults(metadata, { deadline: deadlineIn(timeoutMs) });
    let result = null;
    let graceTimer = null;
    let settled = false;

    const settle = (fn, value) => {
      if (settled) return;
      settled = true;
      if (graceTimer !== null) clearTimeout(graceTimer);
      fn(value);
    };

    call.on('data', (message) => {
      if (result !== null || message.kind !== 'result' || message.result.taskId !== taskId) {
        return;
      }
      result = message.result;
      call.write({ ack: { taskIds: [taskId] } });
      call.end();
      // The server normally closes the stream once it has read the Ack and
      // our half-close; do not hang on one that does not.
      graceTimer = setTimeout(() => {
        call.cancel();
      }, CLOSE_GRACE_MS);
      graceTimer.unref();
    });

    call.on('error', (err) => {
      if (result !== null) {
        // The result is in and acknowledged; a late cancel or close error
        // does not change the outcome.
        settle(resolve, result);
      } else {
        settle(reject, new Error(describeRpcError('StreamResults', err)));
      }
    });

    call.on('end', () => {
      if (result !== null) {
        settle(resolve, result);
      } else {
        settle(reject, new Error(`StreamResults: stream closed before the result of ${taskId}`));
      }
    });

    call.write({ subscribe: { taskIds: [taskId] } });
  });
}

// proto3 JSON renderings of the well-known types, so the output reads like
// any other aiproc client's.
function durationToJson(duration) {
  if (!duration) return null;
  const nanos = String(Math.abs(duration.nanos)).padStart(9, '0').replace(/0+$/, '');
  const negative = duration.nanos < 0 && String(duration.seconds) === '0' ? '-' : '';
  return `${negative}${duration.seconds}${nanos ? `.${nanos}` : ''}s`;
}

function timestampToJson(timestamp) {
  if (!timestamp) return null;
  const millis = Number(timestamp.seconds) * 1000 + Math.floor(timestamp.nanos / 1e6);
  return new Date(millis).toISOString();
}

function resultToJson(result) {
  return {
    ...result,
    queueTime: durationToJson(result.queueTime),
    processingTime: durationToJson(result.processingTime),
    completedAt: timestampToJson(result.completedAt),
  };
}

async function main() {
  const args = parseCommandLine(process.argv.slice(2));
  const content = fs.readFileSync(args.contentFile, 'utf8');
  const aiproc = loadPackage();

  if (args.priority !== undefined) {
    const names = aiproc.Priority.type.value.map((v) => v.name);
    if (!names.includes(args.priority)) {
      throw new UsageError(`--priority must be one of ${names.join(', ')}, got ${args.priority}`);
    }
  }

  const metadata = new grpc.Metadata();
  if (args.clientId !== undefined) {
    metadata.set(CLIENT_ID_KEY, args.clientId);
  }

  const client = new aiproc.ProcessorService(args.server, grpc.credentials.createInsecure());
  try {
    const spec = { url: args.url, content };
    if (args.priority !== undefined) spec.priority = args.priority;
    const queued = await queueTask(client, metadata, spec, args.timeoutMs);
    const result = await waitForResult(client, metadata, queued.taskId, args.timeoutMs);
    return result;
  } finally {
    client.close();
  }
}

main().then(
  (result) => {
    process.stdout.write(`${JSON.stringify(resultToJson(result))}\n`, () => {
      process.exit(result.success ? 0 : 1);
    });
  },
  (err) => {
    const message = String(err && err.message ? err.message : err).replace(/\s+/g, ' ').trim();
    process.stderr.write(`queue-and-wait: ${message}\n`, () => {
      process.exit(2);
    });
  },
);

/*
 * flicker's Lambda runtime interface client for Node.js (CommonJS, built-in
 * modules only, Node 18+).
 *
 * Started by the worker inside the sandbox as
 *
 *     /usr/bin/node /var/runtime/nodejs/bootstrap.js
 *
 * It loads the handler named by $_HANDLER from $LAMBDA_TASK_ROOT (CommonJS via
 * require, ES modules via dynamic import), then loops on the Runtime API at
 * $AWS_LAMBDA_RUNTIME_API: GET the next event, call the handler (promise or
 * callback style), POST the result or the error.  Error bodies, error types,
 * the context object and console formatting follow AWS's Node.js runtime;
 * see docs/runtimes.md for the differences.
 */
'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');
const { Writable } = require('stream');
const util = require('util');
const { pathToFileURL } = require('url');

const API_PREFIX = '/2018-06-01';
const ERROR_TYPE_HEADER = 'Lambda-Runtime-Function-Error-Type';

/* ------------------------------------------------------------ errors */

function errorClass(name) {
  const C = class extends Error {
    constructor(reason) {
      super(reason);
    }
  };
  // Set on the prototype before any instance exists so that the stack's first
  // line reads "Runtime.X: ..." like AWS's.
  Object.defineProperty(C.prototype, 'name', { value: name, writable: true });
  return C;
}

const ImportModuleError = errorClass('Runtime.ImportModuleError');
const HandlerNotFound = errorClass('Runtime.HandlerNotFound');
const MalformedHandlerName = errorClass('Runtime.MalformedHandlerName');
const UserCodeSyntaxError = errorClass('Runtime.UserCodeSyntaxError');
const UnhandledPromiseRejectionBase = errorClass('Runtime.UnhandledPromiseRejection');

class UnhandledPromiseRejection extends UnhandledPromiseRejectionBase {
  constructor(reason, promise) {
    super(reason);
    this.reason = reason;
    this.promise = promise;
  }
}

function isErrorLike(e) {
  return !!e && typeof e.name === 'string' && typeof e.message === 'string' &&
    typeof e.stack === 'string' && e.name !== '' && e.stack !== '';
}

/* The body posted to /error (Node's client sends "trace", not "stackTrace"). */
function toRapidResponse(error) {
  try {
    if (util.types.isNativeError(error) || isErrorLike(error)) {
      const stack = typeof error.stack === 'string' ? error.stack : String(error);
      return {
        errorType: String(error.name).replace(/\x7F/g, '%7F'),
        errorMessage: String(error.message).replace(/\x7F/g, '%7F'),
        trace: stack.replace(/\x7F/g, '%7F').split('\n'),
      };
    }
    return { errorType: typeof error, errorMessage: String(error), trace: [] };
  } catch (_e) {
    return {
      errorType: 'handled',
      errorMessage: 'callback called with Error argument, but there was a ' +
        'problem while retrieving one or more of its message, name, and stack',
    };
  }
}

/* The tab-prefixed JSON used in "Invoke Error" / "Uncaught Exception" logs. */
function toFormatted(error) {
  try {
    return '\t' + JSON.stringify(error, (_k, v) => {
      if (v instanceof Error) {
        const ret = Object.assign({ errorType: v.name, errorMessage: v.message, code: v.code }, v);
        if (typeof v.stack === 'string') ret.stack = v.stack.split('\n');
        return ret;
      }
      return v;
    });
  } catch (_e) {
    return '\t' + JSON.stringify(toRapidResponse(error));
  }
}

/* ------------------------------------------------------------ console */

const LEVELS = { TRACE: 0, DEBUG: 1, INFO: 2, WARN: 3, ERROR: 4, FATAL: 5 };
let currentRequestId; // undefined until the first invoke, as on Lambda

function errorFields(e) {
  return {
    errorType: (e && e.constructor && e.constructor.name) || 'UnknownError',
    errorMessage: e.message,
    stackTrace: typeof e.stack === 'string' ? e.stack.split('\n') : [],
  };
}

/* AWS_LAMBDA_LOG_FORMAT=JSON: {"timestamp","level","requestId","message",...}. */
function jsonLine(level, message, params) {
  const rec = { timestamp: new Date().toISOString(), level, requestId: currentRequestId };
  if (params.length === 0) {
    rec.message = message;
    try {
      return JSON.stringify(rec, (_k, v) => (v instanceof Error ? errorFields(v) : v));
    } catch (_e) {
      rec.message = util.format(message);
      return JSON.stringify(rec);
    }
  }
  rec.message = util.format(message, ...params);
  const err = params.find((p) => p instanceof Error);
  if (err) Object.assign(rec, errorFields(err));
  return JSON.stringify(rec);
}

function patchConsole() {
  const min = LEVELS[(process.env.AWS_LAMBDA_LOG_LEVEL || '').toUpperCase()] || 0;
  const json = (process.env.AWS_LAMBDA_LOG_FORMAT || '').toUpperCase() === 'JSON';
  const make = (level) => function (message, ...params) {
    if (LEVELS[level] < min) return;
    if (json) {
      process.stdout.write(jsonLine(level, message, params) + '\n');
      return;
    }
    const line = `${new Date().toISOString()}\t${currentRequestId}\t${level}\t` +
      util.format(message, ...params);
    // One record per call: newlines become CR, as AWS's runtime does.
    process.stdout.write(line.replace(/\n/g, '\r') + '\n');
  };
  console.trace = make('TRACE');
  console.debug = make('DEBUG');
  console.info = make('INFO');
  console.log = console.info;
  console.warn = make('WARN');
  console.error = make('ERROR');
  console.fatal = make('FATAL');
}

function fatal(msg) {
  try {
    process.stderr.write(`flicker-ric: ${msg}\n`);
  } finally {
    process.exit(1);
  }
}

/* ------------------------------------------------------------ Runtime API */

function safeHeader(v) {
  return typeof v === 'string' && /^[\x20-\x7e]*$/.test(v) && v.length < 1024 ? v : 'Unhandled';
}

class RuntimeClient {
  constructor(address) {
    const i = address.lastIndexOf(':');
    this.host = i > 0 ? address.slice(0, i).replace(/^\[|\]$/g, '') : address;
    this.port = i > 0 ? Number(address.slice(i + 1)) : 80;
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  }

  request(method, p, body, headers, retried) {
    return new Promise((resolve, reject) => {
      const hdrs = Object.assign({}, headers || {});
      if (body !== undefined) {
        hdrs['Content-Type'] = hdrs['Content-Type'] || 'application/json';
        hdrs['Content-Length'] = Buffer.byteLength(body);
      }
      const req = http.request({
        host: this.host, port: this.port, method, path: API_PREFIX + p,
        headers: hdrs, agent: this.agent,
      }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({
          status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks),
        }));
        res.on('error', reject);
      });
      req.on('error', (err) => {
        // A kept-alive socket the server had already closed: retry once.
        if (req.reusedSocket && !retried && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) {
          this.request(method, p, body, headers, true).then(resolve, reject);
        } else {
          reject(err);
        }
      });
      req.end(body);
    });
  }

  async nextInvocation() {
    const res = await this.request('GET', '/runtime/invocation/next');
    if (res.status !== 200) {
      throw new Error(`GET next returned ${res.status}: ${res.body.toString().slice(0, 512)}`);
    }
    return res;
  }

  async post(p, body, headers) {
    const res = await this.request('POST', p, body, headers);
    if (res.status === 413 && p.endsWith('/response')) {
      // The Runtime API already failed this invocation with
      // Function.ResponseSizeTooLarge; the environment stays usable.
      process.stderr.write(`response for ${p} refused: payload too large\n`);
      return;
    }
    if (res.status < 200 || res.status > 299) {
      throw new Error(`POST ${p} returned ${res.status}: ${res.body.toString().slice(0, 512)}`);
    }
  }

  postInvocationResponse(result, id, contentType) {
    return this.post(`/runtime/invocation/${id}/response`, result,
      contentType ? { 'Content-Type': contentType } : undefined);
  }

  postInvocationError(error, id) {
    const r = toRapidResponse(error);
    return this.post(`/runtime/invocation/${id}/error`, JSON.stringify(r),
      { [ERROR_TYPE_HEADER]: safeHeader(r.errorType) });
  }

  postInitError(error) {
    const r = toRapidResponse(error);
    return this.post('/runtime/init/error', JSON.stringify(r),
      { [ERROR_TYPE_HEADER]: safeHeader(r.errorType) });
  }
}

/* Fire-and-forget a Runtime API call; a failure is fatal. */
function send(promise, then) {
  promise.then(() => { if (then) then(); }, (err) => fatal(`Runtime API: ${err.message}`));
}

/* ------------------------------------------------------------ handler */

function hasFolderTypeModule(folder) {
  if (folder.endsWith('/node_modules')) return false;
  const pj = path.join(folder, 'package.json');
  if (fs.existsSync(pj)) {
    try {
      const pkg = JSON.parse(fs.readFileSync(pj, 'utf8'));
      return !!pkg && pkg.type === 'module';
    } catch (e) {
      console.warn(`${pj} cannot be read, it will be ignored for ES module detection purposes.`, e);
      return false;
    }
  }
  if (folder === '/') return false;
  return hasFolderTypeModule(path.resolve(folder, '..'));
}

function isFile(p) {
  try {
    return fs.statSync(p).isFile();
  } catch (_e) {
    return false;
  }
}

function tryRequire(file) {
  return fs.existsSync(file) ? require(file) : undefined;
}

async function tryImport(file) {
  return isFile(file) ? import(pathToFileURL(file).href) : undefined;
}

async function loadModule(appRoot, moduleRoot, moduleName) {
  const base = path.resolve(appRoot, moduleRoot, moduleName);
  const extensionless = tryRequire(base);
  if (extensionless) return extensionless;
  const jsIsESM = isFile(base + '.js') && hasFolderTypeModule(path.dirname(base + '.js'));
  if (!jsIsESM) {
    const m = tryRequire(base + '.js');
    if (m) return m;
  }
  const m = (jsIsESM && (await tryImport(base + '.js'))) ||
    (await tryImport(base + '.mjs')) ||
    tryRequire(base + '.cjs');
  if (m) return m;
  // Last resort, like AWS: a bare require (node_modules, NODE_PATH); its
  // failure gives the familiar "Cannot find module 'index'" message.
  return require(moduleName);
}

async function loadHandler(appRoot, fullHandler) {
  if (fullHandler.includes('..')) {
    throw new MalformedHandlerName(`'${fullHandler}' is not a valid handler name. ` +
      'Use absolute paths when specifying root directories in handler names.');
  }
  const handlerString = path.basename(fullHandler);
  const moduleRoot = fullHandler.substring(0, fullHandler.indexOf(handlerString));
  const match = handlerString.match(/^([^.]*)\.(.*)$/);
  if (!match || match.length !== 3) throw new MalformedHandlerName('Bad handler');
  const [, moduleName, handlerPath] = match;
  let app;
  try {
    app = await loadModule(appRoot, moduleRoot, moduleName);
  } catch (e) {
    if (e instanceof SyntaxError) throw new UserCodeSyntaxError(e);
    if (e && e.code === 'MODULE_NOT_FOUND') throw new ImportModuleError(e);
    throw e;
  }
  const fn = handlerPath.split('.').reduce((obj, key) => obj && obj[key], app);
  if (!fn) throw new HandlerNotFound(`${fullHandler} is undefined or not exported`);
  if (typeof fn !== 'function') throw new HandlerNotFound(`${fullHandler} is not a function`);
  return fn;
}

/* ------------------------------------------------------------ streaming */

/*
 * awslambda.streamifyResponse(handler) marks a handler as response-streaming:
 * it is called as handler(event, responseStream, context).  flicker's Runtime
 * API is buffered, so the stream is collected and posted as one response when
 * it ends (what a plain Invoke of a streaming function returns on AWS too).
 */
const HANDLER_STREAMING = Symbol.for('aws.lambda.runtime.handler.streaming');
const STREAM_RESPONSE = 'response';
const HTTP_INTEGRATION_CT = 'application/vnd.awslambda.http-integration-response';

function createResponseStream() {
  const chunks = [];
  const stream = new Writable({
    write(chunk, encoding, cb) {
      chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk, encoding));
      cb();
    },
  });
  stream.contentType = 'application/octet-stream';
  stream.setContentType = (ct) => { stream.contentType = ct; };
  stream.body = () => Buffer.concat(chunks);
  const write = stream.write.bind(stream);
  const end = stream.end.bind(stream);
  const beforeFirst = () => {
    const hook = stream._onBeforeFirstWrite;
    stream._onBeforeFirstWrite = null;
    if (typeof hook === 'function') hook((c) => write(c));
  };
  stream.write = (...args) => { beforeFirst(); return write(...args); };
  stream.end = (...args) => { beforeFirst(); return end(...args); };
  return stream;
}

class HttpResponseStream {
  static from(underlyingStream, prelude) {
    underlyingStream.setContentType(HTTP_INTEGRATION_CT);
    const metadata = JSON.stringify(prelude);
    underlyingStream._onBeforeFirstWrite = (write) => {
      write(metadata);
      write(new Uint8Array(8)); // the 8 NUL bytes that end the prelude
    };
    return underlyingStream;
  }
}

function installGlobals() {
  globalThis.awslambda = {
    streamifyResponse(handler, options) {
      handler[HANDLER_STREAMING] = STREAM_RESPONSE;
      if (options && options.highWaterMark !== undefined) {
        handler[Symbol.for('aws.lambda.runtime.handler.streaming.highWaterMark')] =
          options.highWaterMark;
      }
      return handler;
    },
    HttpResponseStream,
  };
}

/* ------------------------------------------------------------ invoke */

const NO_OP = () => {};
let beforeExitListener = NO_OP;
process.on('beforeExit', () => beforeExitListener());

/* [callback, context, markCompleted] with AWS's completion semantics. */
function buildCallbackContext(client, id, scheduleNext) {
  let isInvokeDone = false;
  let waitForEmptyEventLoop = true;

  const postError = (err) => {
    console.error('Invoke Error', toFormatted(err));
    send(client.postInvocationError(err, id), scheduleNext);
  };
  const complete = (result) => {
    if (isInvokeDone) {
      console.error('Invocation has already been reported as done. ' +
        'Cannot call complete more than once per invocation.');
      return;
    }
    isInvokeDone = true;
    let body;
    try {
      body = JSON.stringify(result === undefined ? null : result);
    } catch (_e) {
      postError(new Error('Unable to stringify response body'));
      return;
    }
    send(client.postInvocationResponse(body, id), scheduleNext);
  };
  const callback = (err, result) => {
    beforeExitListener = NO_OP;
    if (err !== undefined && err !== null) {
      isInvokeDone = true;
      postError(err);
    } else if (!waitForEmptyEventLoop) {
      complete(result);
    } else {
      // Wait for the event loop to drain (timers, sockets) before answering.
      beforeExitListener = () => setImmediate(() => complete(result));
    }
  };
  const done = (err, result) => {
    beforeExitListener = NO_OP;
    if (err !== undefined && err !== null) {
      isInvokeDone = true;
      postError(err);
    } else {
      complete(result);
    }
  };
  const succeed = (result) => done(null, result);
  const fail = (err) => done(err === undefined || err === null ? 'handled' : err, null);

  let finished = false;
  const once = (fn) => function (...args) {
    if (!finished) {
      finished = true;
      fn(...args);
    }
  };
  const context = {
    get callbackWaitsForEmptyEventLoop() { return waitForEmptyEventLoop; },
    set callbackWaitsForEmptyEventLoop(v) { waitForEmptyEventLoop = v; },
    succeed: once(succeed),
    fail: once(fail),
    done: once(done),
  };
  return [once(callback), context, () => { isInvokeDone = true; }];
}

function parseJsonHeader(value, name) {
  if (value === undefined) return undefined;
  try {
    return JSON.parse(value);
  } catch (e) {
    throw new Error(`Cannot parse ${name} as json: ${e.toString()}`);
  }
}

function isPromise(x) {
  return !!x && typeof x.then === 'function';
}

class Runtime {
  constructor(client, handler, errorCallbacks) {
    this.client = client;
    this.handler = handler;
    this.errorCallbacks = errorCallbacks;
  }

  scheduleIteration() {
    setImmediate(() => {
      this.handleOnce().catch((err) => fatal(`Runtime API: ${err.message}`));
    });
  }

  async handleOnce() {
    const { body, headers } = await this.client.nextInvocation();
    const id = headers['lambda-runtime-aws-request-id'];
    currentRequestId = id;
    if (headers['lambda-runtime-trace-id']) {
      process.env._X_AMZN_TRACE_ID = headers['lambda-runtime-trace-id'];
    } else {
      delete process.env._X_AMZN_TRACE_ID;
    }
    const [callback, callbackContext, markCompleted] =
      buildCallbackContext(this.client, id, () => this.scheduleIteration());
    try {
      this.errorCallbacks.uncaughtException = (error) => {
        send(this.client.postInvocationError(error, id), () => process.exit(129));
      };
      this.errorCallbacks.unhandledRejection = (error) => {
        send(this.client.postInvocationError(error, id), () => process.exit(128));
      };
      // A handler that never answers: respond null once the loop drains.
      beforeExitListener = () => {
        markCompleted();
        send(this.client.postInvocationResponse('null', id), () => this.scheduleIteration());
      };
      const deadline = Number(headers['lambda-runtime-deadline-ms']);
      const context = Object.assign(callbackContext, {
        functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
        functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
        memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
        logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
        logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
        clientContext: parseJsonHeader(headers['lambda-runtime-client-context'], 'ClientContext'),
        identity: parseJsonHeader(headers['lambda-runtime-cognito-identity'], 'CognitoIdentity'),
        invokedFunctionArn: headers['lambda-runtime-invoked-function-arn'],
        awsRequestId: id,
        tenantId: headers['lambda-runtime-aws-tenant-id'],
        getRemainingTimeInMillis: () => deadline - Date.now(),
      });
      const event = JSON.parse(body.toString('utf8'));
      if (this.handler[HANDLER_STREAMING] === STREAM_RESPONSE) {
        this.invokeStreaming(id, event, context, markCompleted);
        return;
      }
      const result = this.handler(event, context, callback);
      if (isPromise(result)) {
        result.then(callbackContext.succeed, callbackContext.fail).catch(callbackContext.fail);
      }
    } catch (err) {
      callback(err);
    }
  }
}

Runtime.prototype.invokeStreaming = function (id, event, context, markCompleted) {
  const stream = createResponseStream();
  let settled = false;
  const next = () => this.scheduleIteration();
  const ok = () => {
    if (settled) return;
    settled = true;
    beforeExitListener = NO_OP;
    markCompleted();
    send(this.client.postInvocationResponse(stream.body(), id, stream.contentType), next);
  };
  const fail = (err) => {
    if (settled) return;
    settled = true;
    beforeExitListener = NO_OP;
    markCompleted();
    console.error('Invoke Error', toFormatted(err));
    send(this.client.postInvocationError(err, id), next);
  };
  stream.on('finish', ok);
  stream.on('error', fail);
  // Never ended and nothing left to run: end it for the handler.
  beforeExitListener = () => { if (!stream.writableEnded) stream.end(); };
  let result;
  try {
    result = this.handler(event, stream, context);
  } catch (err) {
    fail(err);
    return;
  }
  if (isPromise(result)) {
    result.then(() => { if (!stream.writableEnded) stream.end(); }, fail);
  }
};

/* ------------------------------------------------------------ main */

async function main() {
  patchConsole();
  const address = process.env.AWS_LAMBDA_RUNTIME_API;
  if (!address) fatal('AWS_LAMBDA_RUNTIME_API is not set');
  const appRoot = process.env.LAMBDA_TASK_ROOT || '/var/task';
  const handlerName = process.argv[2] || process.env._HANDLER || '';
  try {
    process.chdir(appRoot);
  } catch (_e) { /* keep the current directory */ }
  const client = new RuntimeClient(address);

  // During init an uncaught error is an init error; Runtime swaps these for
  // per-invocation ones.  Either way the process then exits, as on Lambda.
  const errorCallbacks = {
    uncaughtException: (error) => send(client.postInitError(error), () => process.exit(129)),
    unhandledRejection: (error) => send(client.postInitError(error), () => process.exit(128)),
  };
  const onUncaught = (error) => {
    console.error('Uncaught Exception', toFormatted(error));
    errorCallbacks.uncaughtException(error);
  };
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', (reason, promise) => {
    const error = new UnhandledPromiseRejection(
      reason === undefined || reason === null ? String(reason) : reason.toString(), promise);
    console.error('Unhandled Promise Rejection', toFormatted(error));
    errorCallbacks.unhandledRejection(error);
  });

  installGlobals();
  let handler;
  try {
    handler = await loadHandler(appRoot, handlerName);
  } catch (err) {
    onUncaught(err);
    return;
  }
  new Runtime(client, handler, errorCallbacks).scheduleIteration();
}

main();

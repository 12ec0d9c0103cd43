// Starts and stops real pulse servers for the tests: the release binary,
// copied alone into a fresh empty directory (so it must carry its own assets).
import { spawn, ChildProcess } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

const BIN = process.env.PULSE_BIN ?? path.resolve(__dirname, '../../target/release/pulse');

/** A free TCP port on the loopback interface. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

export class PulseServer {
  private proc?: ChildProcess;
  private log = '';
  /** `http://127.0.0.1:PORT/metrics` on the separate metrics listener. */
  private metricsUrl?: string;

  private constructor(
    readonly dir: string,
    readonly port: number,
    private readonly env: Record<string, string>,
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Copies the binary into an empty directory and starts it there. */
  static async start(env: Record<string, string> = {}): Promise<PulseServer> {
    const dir = mkdtempSync(path.join(tmpdir(), 'pulse-e2e-'));
    copyFileSync(BIN, path.join(dir, 'pulse'));
    const server = new PulseServer(dir, await freePort(), env);
    await server.launch();
    return server;
  }

  /** Starts the process and resolves once it says it is listening. */
  async launch(): Promise<void> {
    const proc = spawn(path.join(this.dir, 'pulse'), [], {
      cwd: this.dir,
      env: {
        PATH: process.env.PATH ?? '',
        RUST_LOG: 'info',
        LEPTOS_SITE_ADDR: `127.0.0.1:${this.port}`,
        PULSE_METRICS_ADDR: '127.0.0.1:0',
        ...this.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    await new Promise<void>((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        this.log += chunk.toString();
        const metrics = /metrics on (http:\/\/\S+)/.exec(this.log);
        if (metrics) this.metricsUrl = metrics[1];
        if (this.log.includes('listening on http://')) resolve();
      };
      proc.stdout!.on('data', onData);
      proc.stderr!.on('data', onData);
      proc.once('exit', (code) => reject(new Error(`pulse exited with ${code} before listening:\n${this.log}`)));
    });
  }

  /** Sends SIGTERM and waits for the process to exit. */
  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    proc.kill('SIGCONT'); // a frozen process cannot act on SIGTERM
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    proc.kill('SIGTERM');
    await exited;
    this.proc = undefined;
  }

  /** Kills the process without a word (SIGKILL), as a crash would. */
  async kill(): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    proc.kill('SIGKILL');
    await exited;
    this.proc = undefined;
  }

  /** Freezes the process (SIGSTOP): its sockets stay open but go silent. */
  freeze(): void {
    this.proc?.kill('SIGSTOP');
  }

  /** Lets a frozen process run on (SIGCONT). */
  thaw(): void {
    this.proc?.kill('SIGCONT');
  }

  /** Stops the server and removes its directory. */
  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** The value of one Prometheus series, e.g. `pulse_open_connections{transport="sse"}`. */
  async metric(series: string): Promise<number> {
    if (!this.metricsUrl) throw new Error('the metrics listener is off');
    const text = await (await fetch(this.metricsUrl)).text();
    const line = text.split('\n').find((l) => l.startsWith(series + ' '));
    return line ? Number(line.slice(series.length + 1)) : NaN;
  }
}

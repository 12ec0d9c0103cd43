// A real nginx (Debian's) on a free loopback port, in front of pulse
// instances, configured with the very `nginx` block of the README (as
// tests/support/nginx.rs does for the Rust tests).
import { spawn, ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { freePort } from './server';

/**
 * The README's nginx block for `upstreams` (`host:port` each), listening on
 * `listen` instead of 443 with TLS. With `stripUpgrade`, nginx passes no
 * `Upgrade` header on, as some corporate proxies do: no WebSocket gets through.
 */
function documentedConfig(upstreams: string[], listen: string, stripUpgrade: boolean): string {
  const readme = readFileSync(path.resolve(__dirname, '../../README.md'), 'utf8');
  const block = /```nginx\n([\s\S]*?)```/.exec(readme)?.[1];
  if (!block) throw new Error('no nginx block in the README');
  const servers = [...upstreams];
  const out = block.split('\n').map((line) => {
    const trimmed = line.trimStart();
    if (trimmed.startsWith('server 10.0.0.')) {
      const addr = servers.shift();
      return addr ? `    server ${addr} ${trimmed.split(' ').slice(2).join(' ')}` : '';
    }
    if (trimmed.startsWith('listen 443')) return `    listen ${listen};`;
    if (stripUpgrade && /proxy_set_header (Upgrade|Connection) /.test(trimmed)) {
      return line.replace(/\$\S+;/, '"";');
    }
    return line;
  });
  if (servers.length) throw new Error(`the README's upstream has fewer servers than ${upstreams.length}`);
  return out.join('\n');
}

export class Nginx {
  private constructor(
    private readonly proc: ChildProcess,
    private readonly dir: string,
    readonly port: number,
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts nginx on `port` (a free one by default) in front of `upstreams`. */
  static async start(upstreams: string[], options: { stripUpgrade?: boolean; port?: number } = {}): Promise<Nginx> {
    const port = options.port ?? (await freePort());
    const dir = mkdtempSync(path.join(tmpdir(), 'pulse-nginx-'));
    const conf = `daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log stderr crit;
events { worker_connections 1024; }
http {
  # Which instance served each request, for tests that check the spread.
  log_format upstreams '$request_method $uri $upstream_addr';
  access_log ${dir}/access.log upstreams;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
${documentedConfig(upstreams, `127.0.0.1:${port}`, options.stripUpgrade ?? false)}
}
`;
    writeFileSync(path.join(dir, 'nginx.conf'), conf);
    const proc = spawn('nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'inherit'] });
    for (let i = 0; i < 500 && !(await listening(port)); i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    if (!(await listening(port))) throw new Error('nginx did not start');
    return new Nginx(proc, dir, port);
  }

  /** The instances (`host:port`) that served requests for `uri`, as logged so far. */
  servedBy(uri: string): Set<string> {
    const lines = readFileSync(path.join(this.dir, 'access.log'), 'utf8').split('\n');
    // `$upstream_addr` lists every instance tried, comma-separated.
    return new Set(
      lines
        .map((line) => line.split(' '))
        .filter(([, u]) => u === uri)
        .flatMap(([, , ...tried]) => tried.join(' ').split(', '))
        .filter((upstream) => upstream && upstream !== '-'),
    );
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode === null) {
      const exited = new Promise((resolve) => this.proc.once('exit', resolve));
      this.proc.kill('SIGTERM');
      await exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('error', () => resolve(false));
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
  });
}

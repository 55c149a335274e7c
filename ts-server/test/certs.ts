// Test certificates, made at test time with the openssl CLI in a temporary
// directory: a CA, a server certificate for 127.0.0.1 and localhost, a client
// certificate signed by the CA, and a client certificate from another CA.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

export interface Pair {
  cert: Buffer;
  key: Buffer;
  certFile: string;
  keyFile: string;
}

export interface Certs {
  dir: string;
  ca: Buffer;
  caFile: string;
  server: Pair;
  client: Pair;
  /** A client certificate signed by a CA the server does not trust. */
  stranger: Pair;
  remove(): void;
}

function openssl(dir: string, ...args: string[]): void {
  try {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    if (err.code === 'ENOENT')
      throw new Error('the openssl command is needed to make test certificates (make apt installs it)', { cause: e });
    throw new Error(`openssl ${args.join(' ')}: ${err.stderr?.toString() ?? err.message}`, { cause: e });
  }
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

function makeCa(dir: string, name: string): void {
  openssl(
    dir,
    'req',
    '-x509',
    ...EC,
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.pem`,
    '-days',
    '2',
    '-subj',
    `/CN=mur test ${name}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  );
}

function issue(dir: string, ca: string, name: string, cn: string, ext: string): Pair {
  fs.writeFileSync(path.join(dir, `${name}.ext`), ext);
  openssl(dir, 'req', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
  openssl(
    dir,
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    `${ca}.pem`,
    '-CAkey',
    `${ca}.key`,
    '-set_serial',
    String(Date.now()),
    '-out',
    `${name}.pem`,
    '-days',
    '2',
    '-extfile',
    `${name}.ext`,
  );
  const certFile = path.join(dir, `${name}.pem`);
  const keyFile = path.join(dir, `${name}.key`);
  return { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile), certFile, keyFile };
}

export function makeCerts(): Certs {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-tls-'));
  makeCa(dir, 'ca');
  makeCa(dir, 'other-ca');
  const server = issue(dir, 'ca', 'server', 'localhost', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  const client = issue(dir, 'ca', 'client', 'mur test client', 'extendedKeyUsage=clientAuth\n');
  const stranger = issue(dir, 'other-ca', 'stranger', 'mur stranger', 'extendedKeyUsage=clientAuth\n');
  const caFile = path.join(dir, 'ca.pem');
  return {
    dir,
    ca: fs.readFileSync(caFile),
    caFile,
    server,
    client,
    stranger,
    remove: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

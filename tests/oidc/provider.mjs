// A real OpenID Connect provider (the certified `oidc-provider` library) for
// the SSO tests (tests/sso.rs). It listens on 127.0.0.1:$PORT with issuer
// http://127.0.0.1:$PORT and:
//
// * issues client-credentials access tokens as JWTs (resource indicators,
//   audience `orgwarden`) to the clients below, with extra claims that name
//   the person or service account behind each client;
// * mints ID tokens for a client through its own IdToken model
//   (GET /test/id-token?client=ID&sub=SUB&amr=pwd,mfa), signed like the ID
//   tokens of a login;
// * signs with the private keys in $KEYS (a JSON file: {"keys": [JWK, ...]},
//   the first one signing), and publishes their public halves at its
//   jwks_uri. Key rotation is a restart with another $KEYS.
//
// It prints `ready <issuer>` on stdout once it listens.
//
// `node provider.mjs keys KID...` prints new RS256 private keys instead:
// {"keys": [JWK, ...], "pkcs1": {"KID": base64 DER}} (the DER lets the tests
// sign hand-made tokens with the provider's own keys).

import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

if (process.argv[2] === 'keys') {
  const out = { keys: [], pkcs1: {} };
  for (const kid of process.argv.slice(3)) {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    out.keys.push({ ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' });
    out.pkcs1[kid] = privateKey.export({ type: 'pkcs1', format: 'der' }).toString('base64');
  }
  process.stdout.write(JSON.stringify(out));
  process.exit(0);
}

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const keys = JSON.parse(readFileSync(process.env.KEYS, 'utf8'));

// Who each client is: the claims its tokens carry besides the standard ones.
const people = {
  'carol-cli': { preferred_username: 'carol', amr: ['pwd', 'mfa'], groups: ['eng'] },
  'carol-nomfa': { preferred_username: 'carol', amr: ['pwd'], groups: ['eng'] },
  'alice-cli': { preferred_username: 'alice', amr: ['pwd', 'mfa'], groups: ['admins'] },
  'mallory-cli': { preferred_username: 'mallory', amr: ['pwd', 'mfa'] },
  'ci-bot': { service_account: 'ci-bot' },
};

const clients = Object.keys(people).map((id) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: 'client_secret_post',
}));
// A client that receives ID tokens (its id is their audience).
clients.push({
  client_id: 'web-app',
  client_secret: 'web-app-secret',
  grant_types: ['authorization_code'],
  redirect_uris: ['http://127.0.0.1/callback'],
  response_types: ['code'],
});

const provider = new Provider(issuer, {
  clients,
  jwks: keys,
  claims: { openid: ['sub'], email: ['email'], profile: ['preferred_username'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://api.orgwarden.test',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api',
        audience: 'orgwarden',
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  extraTokenClaims: (ctx, token) => people[token.clientId] ?? {},
  findAccount: (ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
});
provider.proxy = false;

// Test-only: an ID token for `client` about `sub`, issued by the provider's
// own IdToken model and keys.
provider.use(async (ctx, next) => {
  if (ctx.path !== '/test/id-token') return next();
  const client = await provider.Client.find(String(ctx.query.client));
  if (!client) {
    ctx.status = 404;
    return undefined;
  }
  const sub = String(ctx.query.sub);
  const token = new provider.IdToken({ sub, email: `${sub}@acme.test` }, { ctx, client });
  token.scope = 'openid email';
  if (ctx.query.amr) token.set('amr', String(ctx.query.amr).split(','));
  ctx.body = { id_token: await token.issue({ use: 'idtoken' }) };
  return undefined;
});

provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});

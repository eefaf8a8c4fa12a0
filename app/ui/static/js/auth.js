// Credentials: an API key pasted once, or an OIDC access token got by the authorization-code flow with PKCE
// (RFC 7636). Kept in sessionStorage (this tab only, gone when it closes) and sent in the Authorization header
// of each request, never as a cookie, so another site cannot make this browser act (no CSRF).
import { config } from "./config.js";

const KEY = "archive.credential";
const PENDING = "archive.oidc.pending";

export function credential() {
  if (!config.authentication) return null;
  try {
    const stored = JSON.parse(sessionStorage.getItem(KEY) || "null");
    if (stored && stored.expiresAt && stored.expiresAt < Date.now()) {
      sessionStorage.removeItem(KEY);
      return null;
    }
    return stored;
  } catch {
    return null;
  }
}

export function authHeaders() {
  const held = credential();
  return held ? { Authorization: `Bearer ${held.token}` } : {};
}

export function signedIn() {
  return !config.authentication || credential() !== null;
}

export function useApiKey(key) {
  sessionStorage.setItem(KEY, JSON.stringify({ kind: "key", token: key.trim() }));
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

function base64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomString() {
  return base64url(crypto.getRandomValues(new Uint8Array(32)));
}

async function discovery() {
  const response = await fetch(`${config.oidc.issuer}/.well-known/openid-configuration`);
  if (!response.ok) throw new Error(`the identity provider answered ${response.status}`);
  return response.json();
}

function redirectUri() {
  return `${window.location.origin}/ui/`;
}

// Leave for the identity provider's sign-in page; it comes back to /ui/?code=..&state=..
export async function beginOidc() {
  const provider = await discovery();
  const verifier = randomString();
  const state = randomString();
  const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  sessionStorage.setItem(PENDING, JSON.stringify({ verifier, state, back: window.location.hash }));
  const query = new URLSearchParams({
    response_type: "code",
    client_id: config.oidc.clientId,
    redirect_uri: redirectUri(),
    scope: config.oidc.scope,
    state,
    code_challenge: challenge,
    code_challenge_method: "S256",
  });
  window.location.assign(`${provider.authorization_endpoint}?${query}`);
}

// On the way back: exchange the code for a token. Returns true when a sign-in was completed here.
export async function completeOidc() {
  const params = new URLSearchParams(window.location.search);
  if (!config.oidc || !(params.has("code") || params.has("error"))) return false;
  const pending = JSON.parse(sessionStorage.getItem(PENDING) || "null");
  sessionStorage.removeItem(PENDING);
  window.history.replaceState(null, "", `/ui/${pending ? pending.back : ""}`);
  if (params.has("error")) throw new Error(`sign-in refused: ${params.get("error_description") || params.get("error")}`);
  if (!pending || pending.state !== params.get("state")) throw new Error("sign-in answer does not match its request");
  const provider = await discovery();
  const response = await fetch(provider.token_endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code: params.get("code"),
      redirect_uri: redirectUri(),
      client_id: config.oidc.clientId,
      code_verifier: pending.verifier,
    }),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok || !answer.access_token) {
    throw new Error(`token exchange failed: ${answer.error_description || answer.error || response.status}`);
  }
  const expiresAt = answer.expires_in ? Date.now() + answer.expires_in * 1000 : null;
  sessionStorage.setItem(KEY, JSON.stringify({ kind: "oidc", token: answer.access_token, expiresAt }));
  return true;
}

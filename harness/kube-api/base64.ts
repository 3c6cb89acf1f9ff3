/**
 * Base64 as Go's encoding/json decodes []byte fields (Secret data, CSR request and
 * certificate): standard alphabet with padding, and on bad input the error Go reports, which
 * the API server wraps into a 400 ("... cannot be handled as a Secret: illegal base64 data at
 * input byte 4").
 */

const ALPHABET = /[A-Za-z0-9+/]/;

/** Decodes, or returns the offset of the first byte Go would refuse. */
export function decodeBase64(text: string): Buffer | { badByte: number } {
  const clean = text.replace(/[\r\n]/g, '');
  let padding = 0;
  for (let i = 0; i < clean.length; i++) {
    const ch = clean[i];
    if (ch === '=') {
      padding++;
      if (padding > 2 || (i + 1 < clean.length && clean[i + 1] !== '=')) return { badByte: i };
    } else if (!ALPHABET.test(ch) || padding > 0) {
      return { badByte: i };
    }
  }
  if (clean.length % 4 !== 0) return { badByte: clean.length - (clean.length % 4) };
  return Buffer.from(clean, 'base64');
}

/** The message for a field that is not valid base64, as the JSON decoder words it. */
export function base64ErrorText(badByte: number): string {
  return `illegal base64 data at input byte ${badByte}`;
}

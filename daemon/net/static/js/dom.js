// Small DOM helpers. Everything is built with createElement and textContent: no HTML
// strings, so nothing a participant types can ever become markup, and no inline code
// exists for the Content-Security-Policy to forbid.

/**
 * Create an element.
 * @param {string} tag
 * @param {Record<string, any>} [props] className, text, dataset, hidden, on* listeners,
 *   anything else as an attribute.
 * @param {Array<Node|string|null|undefined|false>} [children]
 * @returns {HTMLElement}
 */
export function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'className') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'hidden') node.hidden = Boolean(value);
    else if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else node.setAttribute(key, value === true ? '' : String(value));
  }
  append(node, children);
  return node;
}

/** Append children, skipping empty ones. */
export function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child);
  }
  return node;
}

const SVG = 'http://www.w3.org/2000/svg';

/**
 * An icon from the sprite in room.html (`<symbol id="i-NAME">`).
 * @param {string} name
 * @param {string} [className]
 * @returns {SVGSVGElement}
 */
export function icon(name, className = 'icon') {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', className);
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  const use = document.createElementNS(SVG, 'use');
  use.setAttribute('href', `#i-${name}`);
  svg.append(use);
  return svg;
}

/** Return the initials of a display name (one or two letters), for avatars. */
export function initials(name) {
  const words = String(name || '?').trim().split(/\s+/).filter(Boolean);
  const first = (word) => [...word][0] ?? '?';
  const letters = words.length > 1 ? [first(words[0]), first(words[words.length - 1])] : [first(words[0] ?? '?')];
  return letters.join('').toUpperCase();
}

/** A stable hue (0-359) for a participant id, so each person keeps one avatar colour. */
export function hue(id) {
  let h = 0;
  for (const ch of String(id)) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

/** Format seconds since the epoch as a short local time. */
export function clock(at) {
  return new Date(at * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

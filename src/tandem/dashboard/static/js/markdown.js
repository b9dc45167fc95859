// A small, safe Markdown renderer for model answers.
//
// Safety: the source is HTML-escaped before anything else, so no tag or attribute can come from
// it. The only markup in the output is the fixed tags written here; the only attribute values
// taken from the source are link targets (http, https or mailto only; already escaped, so they
// cannot close their quotes) and code-block language names (letters, digits, + and - only).
//
// Supported: headings, paragraphs (single line breaks kept: models write verse and lists of
// lines), **bold**, *italic* / _italic_, `inline code`, fenced code blocks (an unclosed fence
// runs to the end, which is what a streaming answer looks like), bullet and numbered lists
// nested by indentation, > quotes, horizontal rules, [links](target) to http, https or mailto.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const FENCE = /^\s{0,3}(```|~~~)\s*([\w+-]*)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^\s{0,3}&gt;\s?(.*)$/;
const SAFE_URL = /^(https?:\/\/|mailto:)/i;

/** Markdown source -> HTML string, safe to assign to innerHTML. */
export function renderMarkdown(source) {
  const text = escapeHtml(String(source).replace(/\r\n?/g, "\n").replace(/\0/g, ""));
  return renderBlocks(text.split("\n"));
}

function renderBlocks(lines) {
  const out = [];
  let paragraph = [];
  const flush = () => {
    if (paragraph.length) out.push(`<p>${paragraph.map(inline).join("<br>")}</p>`);
    paragraph = [];
  };
  for (let i = 0; i < lines.length;) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) {
      flush();
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trimStart().startsWith(fence[1])) body.push(lines[i++]);
      i += 1; // the closing fence
      const language = fence[2] ? ` class="language-${fence[2]}"` : "";
      out.push(`<pre><code${language}>${body.join("\n")}</code></pre>`);
      continue;
    }
    const heading = line.match(HEADING);
    if (heading) {
      flush();
      // Answers sit inside the page's outline: "#" becomes h3, and nothing goes past h6.
      const level = Math.min(heading[1].length + 2, 6);
      out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      flush();
      out.push("<hr>");
      i += 1;
      continue;
    }
    if (LIST_ITEM.test(line)) {
      flush();
      const start = i;
      while (i < lines.length && (LIST_ITEM.test(lines[i]) || isContinuation(lines, i))) i += 1;
      out.push(renderList(lines.slice(start, i)));
      continue;
    }
    if (QUOTE.test(line)) {
      flush();
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(lines[i++].match(QUOTE)[1]);
      out.push(`<blockquote>${renderBlocks(quoted)}</blockquote>`);
      continue;
    }
    if (line.trim() === "") flush();
    else paragraph.push(line.trim());
    i += 1;
  }
  flush();
  return out.join("");
}

/** An indented, non-blank line right after a list item belongs to that item. */
function isContinuation(lines, i) {
  return i > 0 && /^\s{2,}\S/.test(lines[i]) && lines[i - 1].trim() !== "";
}

/** Consecutive list lines -> nested <ul>/<ol>, nesting by indentation. */
function renderList(lines) {
  const items = [];
  for (const line of lines) {
    const match = line.match(LIST_ITEM);
    if (match) {
      items.push({
        indent: match[1].replace(/\t/g, "    ").length,
        ordered: /\d/.test(match[2]),
        number: parseInt(match[2], 10),
        text: [match[3]],
      });
    } else {
      items[items.length - 1].text.push(line.trim());
    }
  }
  return renderItems(items, 0, items.length);
}

function renderItems(items, from, to) {
  const first = items[from];
  const tag = first.ordered ? "ol" : "ul";
  const start = first.ordered && first.number !== 1 ? ` start="${first.number}"` : "";
  const parts = [`<${tag}${start}>`];
  for (let i = from; i < to;) {
    let end = i + 1;
    while (end < to && items[end].indent > items[i].indent) end += 1;
    const nested = end > i + 1 ? renderItems(items, i + 1, end) : "";
    parts.push(`<li>${items[i].text.map(inline).join("<br>")}${nested}</li>`);
    i = end;
  }
  parts.push(`</${tag}>`);
  return parts.join("");
}

/** Inline spans of one (escaped) line. Code spans and links are set aside first, so their
 * contents are not formatted again; \u0001N\u0001 marks where each goes back. */
function inline(text) {
  const held = [];
  const hold = (html) => `\u0001${held.push(html) - 1}\u0001`;
  let out = text.replace(/\u0001/g, "");
  out = out.replace(/(`+)(.+?)\1/g, (_, __, code) => hold(`<code>${code.trim()}</code>`));
  out = out.replace(/\[([^\]]+)\]\(([^\s)]+)\)/g, (whole, label, url) =>
    SAFE_URL.test(url)
      ? hold(`<a href="${url}" target="_blank" rel="noopener noreferrer nofollow">${emphasis(label)}</a>`)
      : whole,
  );
  out = emphasis(out);
  return out.replace(/\u0001(\d+)\u0001/g, (_, index) => held[Number(index)]);
}

function emphasis(text) {
  return text
    .replace(/\*\*(?=\S)(.+?)(?<=\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)(.+?)(?<=\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/\*(?=[^\s*])(.+?)(?<=[^\s*])\*/g, "<em>$1</em>")
    .replace(/(^|[^\w])_(?=[^\s_])(.+?)(?<=[^\s_])_(?!\w)/g, "$1<em>$2</em>");
}

// Money and multiples as the server sends them: integers (minor units, hundredths of a multiple).
// Shown and read as text, never through a float: "1.50" is 150, 150 is "1.50".
"use strict";

const Money = (() => {
  const EXPONENT = {JPY: 0, KRW: 0, CLP: 0, ISK: 0, VND: 0};
  const SYMBOL = {EUR: "€", USD: "$", GBP: "£", JPY: "¥"};

  function exponent(currency) { return currency in EXPONENT ? EXPONENT[currency] : 2; }

  function group(digits) { return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ","); }

  // 123456 EUR -> "€1,234.56"; a BigInt or a Number that is an integer.
  function format(amount, currency, signed = false) {
    if (amount === null || amount === undefined) return "–";
    let value = BigInt(amount);
    const negative = value < 0n;
    if (negative) value = -value;
    const exp = exponent(currency);
    const unit = 10n ** BigInt(exp);
    const whole = group((value / unit).toString());
    const frac = exp ? "." + (value % unit).toString().padStart(exp, "0") : "";
    const sign = negative ? "−" : (signed ? "+" : "");
    const symbol = SYMBOL[currency];
    return symbol ? `${sign}${symbol}${whole}${frac}` : `${sign}${whole}${frac} ${currency}`;
  }

  // "1.5" / "1.50" / "2" -> minor units (integer), or null when it is not an amount.
  function parse(text, currency) {
    const exp = exponent(currency);
    const match = String(text).trim().replace(",", ".").match(exp ? /^(\d{1,12})(?:\.(\d+))?$/ : /^(\d{1,12})$/);
    if (!match) return null;
    const frac = match[2] || "";
    if (frac.length > exp) return null;
    return Number(match[1]) * 10 ** exp + Number((frac + "0".repeat(exp)).slice(0, exp) || 0);
  }

  // 150 -> "1.50x"
  function multiple(x100) {
    if (x100 === null || x100 === undefined) return "–";
    const value = BigInt(x100);
    return `${value / 100n}.${(value % 100n).toString().padStart(2, "0")}x`;
  }

  // "1.5" -> 150, or null.
  function parseMultiple(text) {
    const match = String(text).trim().replace(",", ".").replace(/x$/i, "").match(/^(\d{1,7})(?:\.(\d{1,2}))?$/);
    if (!match) return null;
    return Number(match[1]) * 100 + Number(((match[2] || "") + "00").slice(0, 2));
  }

  // The payout rule of the game: amount * multiple_x100 // 100 (integers).
  function payout(amount, x100) { return Number((BigInt(amount) * BigInt(x100)) / 100n); }

  return {format, parse, multiple, parseMultiple, payout, exponent};
})();

//! The stylesheet and the chart's script: plain files served as they are
//! (no build step), kept out of the pages so that the Content-Security-
//! Policy can forbid inline script.

pub const STYLE: &str = r#"
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.4 system-ui, sans-serif; color: #222; background: #f4f5f7; }
header { background: #1f3a5f; }
nav { display: flex; flex-wrap: wrap; gap: .25rem .75rem; align-items: center; padding: .5rem 1rem; }
nav a, nav .brand { color: #fff; text-decoration: none; padding: .25rem 0; }
nav .brand { font-weight: bold; margin-right: .5rem; }
nav a.current { border-bottom: 2px solid #fff; }
nav form.logout { margin-left: auto; }
main { padding: 1rem; max-width: 72rem; margin: 0 auto; }
main.login { max-width: 22rem; margin-top: 3rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.5rem; }
label { display: block; font-size: .9rem; margin-bottom: .2rem; }
input[type=text], input[type=password], select { width: 100%; padding: .45rem; font-size: 1rem; border: 1px solid #aab; border-radius: 4px; background: #fff; }
input[aria-invalid=true] { border-color: #b00020; }
button, a.button { display: inline-block; padding: .45rem .8rem; font-size: .95rem; border: 1px solid #1f3a5f; border-radius: 4px; background: #fff; color: #1f3a5f; text-decoration: none; cursor: pointer; }
button[type=submit]#save, button#login { background: #1f3a5f; color: #fff; margin-top: .75rem; }
button.danger { border-color: #b00020; color: #b00020; }
.error { color: #b00020; font-size: .9rem; margin: .2rem 0 0; }
.notice { background: #e6f4ea; border: 1px solid #9c9; padding: .5rem; border-radius: 4px; }
.hint { color: #555; font-size: .9rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(14rem, 1fr)); gap: .75rem; }
.field.check { align-self: end; }
.filters { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; }
.filters .field { min-width: 8rem; }
.switches { display: flex; flex-wrap: wrap; gap: 1rem; }
.actions { white-space: nowrap; }
.actions form { display: inline; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .4rem .5rem; border-bottom: 1px solid #dde; }
th { background: #e8ebf0; font-size: .85rem; }
canvas { width: 100%; max-width: 600px; height: auto; background: #fff; border: 1px solid #dde; }
.legend .lan { color: #1f77b4; } .legend .wan { color: #d62728; }
/* A phone: each row becomes a card of label/value lines. */
@media (max-width: 40rem) {
  table thead { display: none; }
  table, tbody, tr, td { display: block; width: 100%; }
  tr { margin-bottom: .75rem; border: 1px solid #dde; }
  td { border: none; padding: .25rem .5rem; }
  td[data-label]::before { content: attr(data-label) ": "; font-weight: bold; }
}
"#;

/// Polls the counters every second and draws the packets per second of
/// the last minute, LAN and WAN, on the page's canvas.
pub const CHART: &str = r#"
(function () {
  var canvas = document.getElementById('pps');
  if (!canvas) return;
  var ctx = canvas.getContext('2d');
  var points = 60, lan = [], wan = [], last = null;
  function draw() {
    var w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    var max = Math.max(1, Math.max.apply(null, lan.concat(wan)));
    ctx.fillStyle = '#555'; ctx.font = '12px sans-serif';
    ctx.fillText(Math.round(max) + ' pkt/s', 4, 12);
    [[lan, '#1f77b4'], [wan, '#d62728']].forEach(function (s) {
      ctx.strokeStyle = s[1]; ctx.lineWidth = 2; ctx.beginPath();
      s[0].forEach(function (v, i) {
        var x = (points - s[0].length + i) * w / (points - 1), y = h - 2 - v * (h - 16) / max;
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    });
  }
  function poll() {
    fetch(canvas.dataset.source, { credentials: 'same-origin' })
      .then(function (r) { return r.json(); })
      .then(function (now) {
        if (last) {
          var secs = Math.max(0.001, (now.at_ms - last.at_ms) / 1000);
          lan.push(Math.max(0, now.lan_rx - last.lan_rx) / secs);
          wan.push(Math.max(0, now.wan_rx - last.wan_rx) / secs);
          if (lan.length > points) { lan.shift(); wan.shift(); }
        }
        last = now; draw();
        canvas.dataset.samples = String(lan.length);
      })
      .catch(function () {});
  }
  poll(); setInterval(poll, 1000);
})();
"#;

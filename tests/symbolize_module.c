/* symbolize_module.c: a module the symbolize test only ever dlopens, from
 * a copy whose file it then replaces on disk, to check that symbolize stops
 * trusting a file whose build ID is not the one in memory.  (Loading a copy
 * of a library the test is linked with would define its globals twice.)
 */
struct Gauge {
  int id;
  double level;
};
struct Gauge gauges[4];

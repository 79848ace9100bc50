/* report: placeholder, being written. */
#include "report.h"

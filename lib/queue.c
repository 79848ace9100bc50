/* queue: placeholder, being written. */
#include "queue.h"

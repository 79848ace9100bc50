/* queue: placeholder, being written. */
#pragma once
